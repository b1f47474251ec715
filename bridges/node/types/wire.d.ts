// Types of `require('snakepit-bridge').wire`: framing and codecs of the
// Snakepit protocol (4-byte big-endian length, then a JSON or MessagePack
// map). Hand-written against lib/wire.js.

/// <reference types="node" />

/** The protocol version this bridge speaks, sent in `hello`. */
export declare const PROTOCOL_VERSION: number;
/** The default largest frame payload read: 64 MiB. */
export declare const DEFAULT_MAX_FRAME_SIZE: number;
/** Bytes of the length header in front of every frame: 4. */
export declare const HEADER_SIZE: number;

/** What went wrong with a frame, as the protocol's test vectors name it. */
export type WireErrorKind =
  | 'truncated'
  | 'too_large'
  | 'invalid_payload'
  | 'invalid_utf8'
  | 'missing_field'
  | 'wrong_type';

/** A frame that cannot be taken as a protocol message. */
export declare class WireError extends Error {
  constructor(kind: WireErrorKind, message: string);
  readonly name: 'WireError';
  readonly kind: WireErrorKind;
}

/** A decoded frame: always a map. */
export type Message = Record<string, unknown>;

/** The name of a wire codec; pool and worker must use the same. */
export type CodecName = 'json' | 'msgpack';

/** A wire codec: whole frames out, payloads (frames without header) in. */
export interface Codec {
  readonly name: CodecName;
  /** The frame of `value`: header and payload in one buffer. */
  encodeFrame(value: unknown): Buffer;
  /** A payload's map; throws a `WireError` when it is not one. */
  decodePayload(payload: Uint8Array): Message;
}

/**
 * The codec named `name` (case-insensitive; `json` when empty). `msgpack`
 * loads `@msgpack/msgpack`, and throws when it is not installed; any other
 * name throws.
 */
export declare function getCodec(name?: string | null): Codec;

/** The JSON codec, which needs nothing installed. */
export declare const jsonCodec: Codec;

/**
 * The `@msgpack/msgpack` module, found beside the bridge, next to the main
 * script or in the working directory; throws naming the package when absent.
 */
export declare function loadMsgpack(): unknown;

export interface FrameReaderOptions {
  /** Called with each whole payload, in order. */
  onFrame(payload: Buffer): void;
  /** Called for an oversized frame (skipped) or a truncated stream. */
  onError(error: WireError): void;
  /** Larger payloads are skipped and reported. Default 64 MiB. */
  maxFrameSize?: number;
}

/** Splits a byte stream into frame payloads. */
export declare class FrameReader {
  constructor(options: FrameReaderOptions);
  /** Feeds the next bytes of the stream. */
  push(chunk: Buffer): void;
  /** The stream ended; a half-read frame is reported as `truncated`. */
  end(): void;
}

/** Checks a frame going from a worker to the pool; returns it. */
export declare function validateToPool(msg: unknown): Message;
/** Checks a frame going from the pool to a worker; returns it. */
export declare function validateToWorker(msg: unknown): Message;

export interface DecodeFramesOptions {
  /** A codec or its name. Default `json`. */
  codec?: CodecName | Codec;
  /** `validateToPool`, `validateToWorker`, or none. */
  validate?: ((msg: unknown) => Message) | null;
  maxFrameSize?: number;
}

/** Decodes a whole byte string of frames; throws the first `WireError`. */
export declare function decodeFrames(
  bytes: Uint8Array | ArrayLike<number>,
  options?: DecodeFramesOptions
): Message[];

/**
 * Whether a decoded value is a map: a plain object. Arrays, bin values
 * (`Uint8Array`) and MessagePack ext values (`ExtData`, and the `Date`
 * the timestamp extension decodes to) are not.
 */
export declare function isMap(value: unknown): value is Record<string, unknown>;
