// The resolve hook `esm_main.mjs` registers: `snakepit-bridge` and
// `snakepit-bridge/package.json` (what its `exports` name) are the files of
// the bundled copy this file sits in; every other specifier resolves as
// Node resolves it.
const EXPORTS = new Map([
  ['snakepit-bridge', new URL('./lib/index.js', import.meta.url).href],
  ['snakepit-bridge/package.json', new URL('./package.json', import.meta.url).href],
]);

export async function resolve(specifier, context, next) {
  const url = EXPORTS.get(specifier);
  if (url !== undefined) {
    return { url, shortCircuit: true };
  }
  return next(specifier, context);
}
