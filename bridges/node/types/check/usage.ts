// Compiled by `npm run test:types` against the package's own declarations
// (resolved by name through its `exports`, as a user's project does), then
// run: the names declared are exactly the names exported at run time.

import * as bridge from 'snakepit-bridge';
import {
  CancelledError,
  Context,
  Handler,
  HostCallError,
  WireError,
  Worker,
  genericCommands,
  wire,
} from 'snakepit-bridge';

// Every value the declarations name, listed once: the compiler refuses a
// missing or an extra entry.
const declared: Record<keyof typeof bridge, true> = {
  Worker: true,
  Context: true,
  CancelledError: true,
  HostCallError: true,
  WireError: true,
  genericCommands: true,
  BRIDGE_NAME: true,
  VERSION: true,
  PROTOCOL_VERSION: true,
  protectStdout: true,
  wire: true,
};

const declaredWire: Record<keyof typeof wire, true> = {
  PROTOCOL_VERSION: true,
  DEFAULT_MAX_FRAME_SIZE: true,
  HEADER_SIZE: true,
  WireError: true,
  FrameReader: true,
  getCodec: true,
  jsonCodec: true,
  loadMsgpack: true,
  validateToPool: true,
  validateToWorker: true,
  decodeFrames: true,
  isMap: true,
};

// The public members of a worker and of a context, likewise.
const workerMembers: Record<keyof Worker, true> = {
  codecName: true,
  maxConcurrency: true,
  sigint: true,
  maxFrameSize: true,
  bridgeName: true,
  bridgeVersion: true,
  workerId: true,
  startedAt: true,
  requestsHandled: true,
  uptime: true,
  codec: true,
  log: true,
  command: true,
  commandNames: true,
  hello: true,
  run: true,
  serve: true,
};

const contextMembers: Record<keyof Context, true> = {
  worker: true,
  requestId: true,
  command: true,
  sessionId: true,
  workerId: true,
  traceparent: true,
  tracestate: true,
  baggage: true,
  timeoutMs: true,
  streamRequested: true,
  cancelled: true,
  signal: true,
  log: true,
  session: true,
  throwIfCancelled: true,
  sendChunk: true,
  callHost: true,
  request_id: true,
  session_id: true,
  worker_id: true,
  call_host: true,
};

// What an object offers at run time: its own and inherited properties,
// fields, getters and methods, except the private `_` ones.
function members(obj: object): Record<string, true> {
  const names: Record<string, true> = {};
  for (let o: object | null = obj; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
    for (const name of Object.getOwnPropertyNames(o)) {
      if (!name.startsWith('_') && name !== 'constructor') names[name] = true;
    }
  }
  return names;
}

// A worker as the README writes one; compiled, never run.
export function readmeWorker(): Worker {
  const greet: Handler = async (args, ctx: Context) => {
    ctx.throwIfCancelled();
    ctx.sendChunk({ step: 1 });
    const seen = ((await ctx.session.get('visits')) as number | null) ?? 0;
    await ctx.session.set('visits', seen + 1);
    ctx.log.info('greeting', args.name, ctx.requestId, ctx.sessionId, ctx.timeoutMs);
    ctx.signal.addEventListener('abort', () => undefined);
    try {
      await ctx.callHost('lookup', { id: 1 });
    } catch (err) {
      if (err instanceof HostCallError) ctx.log.warn(err.type, err.hostTraceback);
      if (err instanceof CancelledError) throw err;
    }
    return `hi ${String(args.name)}`;
  };
  const worker = new Worker({
    commands: { ...genericCommands(), greet },
    codec: 'json',
    maxConcurrency: 4,
    sigint: true,
  });
  worker.command('shout', (args) => String(args.text).toUpperCase());
  // A handler may state the shape of its args, in `commands` and in command().
  interface Sum {
    a: number;
    b: number;
  }
  const typed = new Worker({ commands: { sum: (args: Sum) => args.a + args.b } });
  typed.command('size', async (args: { items: string[] }, ctx: Context) => ctx.requestId + args.items.length);
  const hello = worker.hello();
  void [worker.commandNames(), hello.capabilities.max_concurrency, worker.uptime];
  return worker;
}

function same(what: string, names: string[], runtime: object): void {
  const want = [...names].sort().join(', ');
  const got = Object.keys(runtime).sort().join(', ');
  if (want !== got) {
    throw new Error(`${what}: declared [${want}] but exported [${got}]`);
  }
}

// The codec round trip through the declared types.
const codec: wire.Codec = wire.getCodec('json');
const frames = wire.decodeFrames(codec.encodeFrame({ id: 1, command: 'ping' }), {
  codec: 'json',
  validate: wire.validateToWorker,
});
if (frames.length !== 1 || frames[0].command !== 'ping') {
  throw new Error(`decodeFrames gave ${JSON.stringify(frames)}`);
}
if (!(new WireError('truncated', 'x') instanceof Error)) throw new Error('WireError is not an Error');

// eslint-disable-next-line @typescript-eslint/no-require-imports
const runtime = require('snakepit-bridge');
same('snakepit-bridge', Object.keys(declared), runtime);
same('snakepit-bridge wire', Object.keys(declaredWire), runtime.wire);
const worker = new runtime.Worker();
same('Worker', Object.keys(workerMembers), members(worker));
same('Context', Object.keys(contextMembers), members(new runtime.Context(worker, { id: 1, command: 'ping' })));
console.log('types match the exports of snakepit-bridge');
