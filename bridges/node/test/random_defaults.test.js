'use strict';

// docs/protocol.md section 7, the generic worker's `random` (Node only):
// "`uniform` (`min` 0, `max` 1), `integer` (`min` 0, `max` 100, inclusive)
// or `normal` (`mean` 0, `std` 1)". Each type called with no bounds,
// 2,000 times, against a real generic worker.

const test = require('node:test');
const assert = require('node:assert/strict');

const { GENERIC_WORKER, WorkerProcess } = require('./helpers');

const N = 2000;

// `N` values of `random` with `args`, requested all at once and then read.
async function sample(w, firstId, args) {
  for (let i = 0; i < N; i++) w.request(firstId + i, 'random', args);
  const values = [];
  for (let i = 0; i < N; i++) {
    const r = await w.reply(firstId + i);
    assert.equal(r.success, true, JSON.stringify(r));
    assert.deepStrictEqual(r.result.parameters, args);
    values.push(r.result.value);
  }
  return values;
}

test('random without bounds: integer in 0..=100 with both ends seen, uniform in [0, 1), normal mean 0 std 1', async (t) => {
  const w = new WorkerProcess(GENERIC_WORKER);
  t.after(() => w.kill());
  await w.hello();

  const ints = await sample(w, 1, { type: 'integer' });
  for (const v of ints) assert.ok(Number.isInteger(v) && v >= 0 && v <= 100, `integer ${v} outside 0..=100`);
  // Each end has a 1 in 101 chance per call: either missed in 2,000 calls about once in 2e8 runs.
  assert.ok(ints.includes(0), 'never 0');
  assert.ok(ints.includes(100), 'never 100');

  const uniform = await sample(w, 1 + N, { type: 'uniform' });
  for (const v of uniform) assert.ok(typeof v === 'number' && v >= 0 && v < 1, `uniform ${v} outside [0, 1)`);
  assert.ok(Math.min(...uniform) < 0.01 && Math.max(...uniform) > 0.99, 'uniform does not span [0, 1)');

  const normal = await sample(w, 1 + 2 * N, { type: 'normal' });
  const mean = normal.reduce((a, b) => a + b, 0) / N;
  const std = Math.sqrt(normal.reduce((a, b) => a + (b - mean) ** 2, 0) / (N - 1));
  // The sample mean's own std is 1/sqrt(2000) = 0.022, the std's about 0.016.
  assert.ok(Math.abs(mean) < 0.2, `normal mean ${mean}`);
  assert.ok(std > 0.8 && std < 1.2, `normal std ${std}`);

  assert.deepStrictEqual(await w.close(), { code: 0, signal: null });
});
