// The resolve hook `esm_main.mjs` registers: `snakepit-bridge` is the
// bundled copy this file sits in (its `exports` name nothing else); every
// other specifier resolves as Node resolves it.
const BRIDGE = new URL('./lib/index.js', import.meta.url).href;

export async function resolve(specifier, context, next) {
  if (specifier === 'snakepit-bridge') {
    return { url: BRIDGE, shortCircuit: true };
  }
  return next(specifier, context);
}
