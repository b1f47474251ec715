// Types of snakepit-bridge: write a Snakepit worker in Node.js.
// Hand-written against lib/index.js, lib/worker.js and lib/generic.js.
//
//   import { Worker } from 'snakepit-bridge';
//   new Worker({ commands: { greet: (args, ctx) => `hi ${args.name}` } }).run();

/// <reference types="node" />

import * as wire from './wire';

export { wire };
export { WireError } from './wire';

/** A handler's arguments: the request's `args` map (`{}` when it had none). */
export type Args = Record<string, any>;

/**
 * A command: gets the request's arguments and its context, returns the
 * result (or a promise of it). What it throws is the call's error: `type`
 * is the error's `name` (or its class name), `traceback` its stack.
 */
export type Handler = {
  // Declared as a method so that its parameters are compared both ways: a
  // handler may state the shape of the args it expects
  // (`(args: { n: number }) => args.n`), which the frame does not check.
  handler(args: Args, ctx: Context): unknown;
}['handler'];

/** Options of `new Worker(options)`. */
export interface WorkerOptions {
  /** `{name: handler}`; more with `worker.command(name, handler)`. */
  commands?: Record<string, Handler>;
  /** `json` or `msgpack`. Default: `SNAKEPIT_CODEC`, else `json`. */
  codec?: wire.CodecName;
  /** Calls run at once. Default 16 (also for `null`); `SNAKEPIT_MAX_CONCURRENCY` (decimal digits, at least 1, else a RangeError) overrides it. */
  maxConcurrency?: number | null;
  /** Declare `sigint` and let SIGINT cancel the running calls. Default false. */
  sigint?: boolean;
  /**
   * The largest frame payload either way, in bytes: larger incoming frames
   * are skipped with a `ProtocolError` reply; a larger reply goes out as a
   * failed reply of type `ResultTooLarge` (a chunk that large ends its call
   * so), and a host call that large rejects with a `HostCallError` of that
   * type, unsent. Default `SNAKEPIT_MAX_FRAME_SIZE`, else 64 MiB (also for
   * `null`); above 2^32-1 counts as 2^32-1; a value below 1 or not whole
   * (`Infinity` too) is a `RangeError`.
   */
  maxFrameSize?: number | null;
  /** The bridge name in `hello`. Default `snakepit-node`. */
  name?: string;
}

export interface RunOptions {
  /** `false`: resolve on EOF instead of exiting the process with 0. */
  exit?: boolean;
}

export interface ServeOptions {
  /**
   * Where frames are read from: a stream of bytes (`Buffer` or `Uint8Array`
   * chunks). A chunk of text (an encoding set on the stream) rejects the
   * promise `serve()` returns with a `TypeError`.
   */
  input: NodeJS.ReadableStream;
  /** Writes one whole frame. */
  write(frame: Buffer): void;
}

/** A line on stderr per call, tagged with the worker and request id. */
export interface Logger {
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
}

/** The pool's session store, through the host functions `session.*`. */
export interface Session {
  /** The stored value; its type is the caller's to state (`get<number>(key)`). */
  get<T = any>(key: string): Promise<T>;
  set(key: string, value: unknown): Promise<unknown>;
  delete(key: string): Promise<unknown>;
}

/** The `hello` frame a worker sends first. */
export interface Hello {
  type: 'hello';
  protocol: number;
  pid: number;
  bridge: string;
  runtime: string;
  capabilities: {
    max_concurrency: number;
    cancel: boolean;
    sigint: boolean;
    streaming: boolean;
    host_calls: boolean;
  };
}

/** A worker: a registry of commands and the loop that serves them. */
export declare class Worker {
  constructor(options?: WorkerOptions);
  readonly codecName: string;
  readonly maxConcurrency: number;
  readonly sigint: boolean;
  readonly maxFrameSize: number;
  readonly bridgeName: string;
  /** The package's version, as `hello` reports it. */
  readonly bridgeVersion: string;
  /** From `SNAKEPIT_WORKER_ID`, or from the pool's init ping; `null` before either. */
  readonly workerId: string | null;
  /** When the worker was made, in milliseconds since the epoch. */
  readonly startedAt: number;
  /** Requests accepted so far. */
  readonly requestsHandled: number;
  /** Seconds since the worker was made. */
  readonly uptime: number;
  readonly codec: wire.Codec;
  readonly log: Logger;
  /** Registers (or replaces) a command; returns the worker. */
  command(name: string, handler: Handler): this;
  /** The names of the registered commands, `ping` included. */
  commandNames(): string[];
  /** The `hello` frame this worker sends. */
  hello(): Hello;
  /**
   * Serves stdin/stdout until EOF, then exits 0 (unless `exit` is false).
   * Protects stdout first and handles SIGTERM and SIGINT.
   */
  run(options?: RunOptions): Promise<void>;
  /**
   * Serves frames from `input`, writing with `write`, without touching the
   * process; resolves once the input ended and every call has replied.
   */
  serve(options: ServeOptions): Promise<void>;
}

/** What a handler gets besides its arguments. */
export declare class Context {
  private constructor();
  readonly worker: Worker;
  readonly requestId: number;
  readonly command: string;
  /** The caller's session, or `null`. */
  readonly sessionId: string | null;
  readonly workerId: string | null;
  /** W3C trace context of the caller, or `null`. */
  readonly traceparent: string | null;
  readonly tracestate: string | null;
  /** W3C baggage of the caller (`k1=v1,k2=v2`), or null. */
  readonly baggage: string | null;
  /** Milliseconds the caller had left when it sent the request, or `null`. */
  readonly timeoutMs: number | null;
  /** Whether the caller consumes chunks. */
  readonly streamRequested: boolean;
  /** `true` once the call was cancelled. */
  readonly cancelled: boolean;
  /** Fires on cancellation. */
  readonly signal: AbortSignal;
  readonly log: Logger;
  readonly session: Session;
  /** Throws a `CancelledError` if the call was cancelled. */
  throwIfCancelled(): void;
  /**
   * Sends a partial result before the final one; written only when the
   * caller asked for a stream and the call is neither answered nor
   * cancelled. Returns whether it was. A chunk above the worker's
   * `maxFrameSize` is not: the call ends with a failed reply of type
   * `ResultTooLarge` instead.
   */
  sendChunk(data: unknown): boolean;
  /**
   * Runs a function the host registered. Rejects with a `HostCallError`
   * (type `ResultTooLarge`, unsent, when the request would be larger than
   * the worker's `maxFrameSize`), or a `CancelledError` once the call is
   * cancelled or answered (a task or timer the handler left behind).
   */
  callHost(fn: string, args?: Record<string, unknown>): Promise<unknown>;
  /** The protocol's spellings, as in the other bridges. */
  readonly request_id: number;
  readonly session_id: string | null;
  readonly worker_id: string | null;
  call_host(fn: string, args?: Record<string, unknown>): Promise<unknown>;
}

/** A cancelled call; its `name` is the wire error type `Cancelled`. */
export declare class CancelledError extends Error {
  constructor(message?: string);
}

/** A failed host call; `type` (and `name`) is the host's error type. */
export declare class HostCallError extends Error {
  constructor(type: string, message: string, traceback?: string);
  readonly type: string;
  /** The host's traceback, when it sent one. */
  readonly hostTraceback?: string;
}

/** The generic commands of the protocol; a fresh object on each call. */
export declare function genericCommands(): {
  ping: Handler;
  echo: Handler;
  compute: Handler;
  info: Handler;
  random: Handler;
};

/**
 * Keeps fd 1 for frames and sends everything user code prints to stderr.
 * Returns the descriptor frames are written to.
 */
export declare function protectStdout(): number;

/** `snakepit-node`. */
export declare const BRIDGE_NAME: string;
/** The package's version. */
export declare const VERSION: string;
/** The protocol version this bridge speaks. */
export declare const PROTOCOL_VERSION: number;
