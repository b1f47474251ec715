'use strict';

// Framing and codecs of the Snakepit wire protocol, version 1
// (docs/protocol.md): a 4-byte big-endian length, then one JSON or
// MessagePack map. Nothing here touches the process; the worker and the tests
// both build on it.

const { TextDecoder, inspect } = require('util');
const buffer = require('buffer');
const { userRequires } = require('./packages');

const PROTOCOL_VERSION = 1;
const DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024;
const HEADER_SIZE = 4;

// A frame that cannot be taken as a protocol message. `kind` is one of the
// error kinds of the test vectors: truncated, too_large, invalid_payload,
// invalid_utf8, missing_field, wrong_type.
class WireError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = 'WireError';
    this.kind = kind;
  }
}

// ---------------------------------------------------------------------------
// UTF-8 validation

// buffer.isUtf8 is native (simdutf) but only exists from Node 18.14; the
// fatal TextDecoder is the portable fallback for Node 16.
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const isUtf8 =
  typeof buffer.isUtf8 === 'function'
    ? buffer.isUtf8
    : (bytes) => {
        try {
          strictDecoder.decode(bytes);
          return true;
        } catch (_) {
          return false;
        }
      };

// ---------------------------------------------------------------------------
// Strings without a UTF-8 form

// Protocol strings are UTF-8 (docs/protocol.md section 3). A JavaScript
// string is UTF-16 and may hold half a surrogate pair (what cutting text in
// the middle of an emoji gives), which has no UTF-8 form: JSON.stringify
// writes it as an escape such as "\ud83d", which decodes to no UTF-8 text,
// and the MessagePack encoder writes bytes that are not UTF-8. Either way the
// pool would refuse the frame and replace the worker, so both encoders throw
// an EncodeError instead (a reply then fails, a chunk or host call throws).
class EncodeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'EncodeError';
  }
}

// A lone surrogate, matched as one code point in a `u` regex: a pair is one
// supplementary code point, never a surrogate.
const LONE_SURROGATE = /\p{Surrogate}/u;
// String.prototype.isWellFormed is native from Node 20.
const isWellFormed =
  typeof String.prototype.isWellFormed === 'function'
    ? (s) => s.isWellFormed()
    : (s) => !LONE_SURROGATE.test(s);

function loneSurrogateError(codeUnit) {
  return new EncodeError(
    `a string holds a lone surrogate (\\u${codeUnit.toString(16)}, half of a surrogate pair), which has no UTF-8 form`
  );
}

function checkWellFormed(s) {
  if (!isWellFormed(s)) throw loneSurrogateError(s.charCodeAt(LONE_SURROGATE.exec(s).index));
}

// ---------------------------------------------------------------------------
// JSON

// JSON.stringify (Node 12 and later) writes a lone surrogate as an escape
// "\udXXX" and nothing else as one: a pair goes out as UTF-8 and other
// escapes are below U+0020. So an escaped backslash aside ("\\ud83d" is a
// backslash then text), such an escape in the output is a lone surrogate.
const JSON_LONE_SURROGATE = /[^\\](?:\\\\)*\\u(d[89a-f][0-9a-f]{2})/;

// JSON has no NaN or infinities, nor bytes: JSON.stringify writes null for
// the first, and an object for a Buffer ({type: 'Buffer', data: [...]}) or
// another view ({"0": ...}). In a result that is what the README says; in a
// host call's arguments the pool refuses both (with MessagePack it answers
// InvalidArgument), so that no null or stand-in object is stored in a
// session in place of what a handler gave. So the worker encodes a host
// call with `strict` set, and such a value is an EncodeError: the host call
// rejects and nothing is sent. A Buffer comes here as its toJSON made it,
// so the holder's own property is looked at too (without running a getter
// a second time).
function refuseNoJsonForm(key, value) {
  const own = value !== null && typeof value === 'object' ? Object.getOwnPropertyDescriptor(this, key) : undefined;
  if (isBytes(value) || (own !== undefined && isBytes(own.value))) {
    throw new EncodeError('bytes have no JSON form: encode them yourself (base64, say)');
  }
  const n = value instanceof Number ? Number(value) : value;
  if (typeof n === 'number' && !Number.isFinite(n)) {
    throw new EncodeError(`${n} has no JSON form (it would arrive as null)`);
  }
  return value;
}

function isBytes(value) {
  return ArrayBuffer.isView(value) || value instanceof ArrayBuffer;
}

function encodeJsonFrame(value, strict = false) {
  // JSON.stringify is already compact and leaves non-ASCII as UTF-8. Writing
  // the text straight after the header builds the frame in one allocation.
  const text = JSON.stringify(value, strict === true ? refuseNoJsonForm : undefined);
  // One native scan; the regex only runs when the text holds "\ud".
  if (text !== undefined && text.indexOf('\\ud') !== -1) {
    const found = JSON_LONE_SURROGATE.exec(text);
    if (found !== null) throw loneSurrogateError(parseInt(found[1], 16));
  }
  const length = Buffer.byteLength(text, 'utf8');
  const frame = Buffer.allocUnsafe(HEADER_SIZE + length);
  frame.writeUInt32BE(length, 0);
  frame.write(text, HEADER_SIZE, length, 'utf8');
  return frame;
}

function decodeJsonPayload(payload) {
  // A Uint8Array that is not a Buffer (the declared type allows one) has a
  // toString of its own, which lists the byte values.
  const bytes = Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const text = bytes.toString('utf8');
  // toString replaces bad bytes with U+FFFD instead of failing. Real U+FFFD
  // characters are rare, so the strict check runs only when one shows up,
  // which keeps the common path to a single native pass.
  if (text.indexOf('\ufffd') !== -1 && !isUtf8(payload)) {
    throw new WireError('invalid_utf8', 'frame is not valid UTF-8');
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch (_) {
    throw new WireError('invalid_payload', 'frame is not valid JSON');
  }
  return requireMap(value);
}

// ---------------------------------------------------------------------------
// MessagePack

const MSGPACK_PACKAGE = '@msgpack/msgpack';
let msgpackModule = null;

// Loaded on first use so that JSON-only workers need nothing installed. The
// package may sit beside the bridge, on NODE_PATH, or next to the user's
// script, so each of those is tried in turn.
function loadMsgpack() {
  if (msgpackModule) return msgpackModule;
  const attempts = [() => require(MSGPACK_PACKAGE)];
  for (const load of userRequires()) attempts.push(() => load(MSGPACK_PACKAGE));
  for (const attempt of attempts) {
    try {
      msgpackModule = attempt();
      return msgpackModule;
    } catch (err) {
      if (err && err.code !== 'MODULE_NOT_FOUND') throw err;
    }
  }
  throw new Error(
    `the msgpack codec needs the ${MSGPACK_PACKAGE} package: npm install ${MSGPACK_PACKAGE}`
  );
}

// @msgpack/msgpack decodes str bytes without checking them, so a pass over
// the payload finds every str and checks its UTF-8 itself. It walks the
// structure without building anything; truncation is left to the decoder,
// which reports it more precisely. `onString(start, stop)`, when given, is
// told where each non-empty str's bytes lie.
function checkMsgpackStrings(bytes, onString) {
  const end = bytes.length;
  let pos = 0;
  let pending = 1; // values still to read at this point of the walk
  while (pending > 0 && pos < end) {
    const tag = bytes[pos++];
    pending--;
    let strLength = -1;
    let skip = 0;
    if (tag <= 0x7f || tag >= 0xe0) {
      continue; // fixint
    } else if (tag <= 0x8f) {
      pending += 2 * (tag & 0x0f);
    } else if (tag <= 0x9f) {
      pending += tag & 0x0f;
    } else if (tag <= 0xbf) {
      strLength = tag & 0x1f;
    } else {
      switch (tag) {
        case 0xc0: case 0xc2: case 0xc3: break;
        case 0xc1: return; // never used: the decoder rejects it
        case 0xc4: skip = bytes[pos] + 1; break;
        case 0xc5: skip = readUint(bytes, pos, 2) + 2; break;
        case 0xc6: skip = readUint(bytes, pos, 4) + 4; break;
        case 0xc7: skip = bytes[pos] + 2; break;
        case 0xc8: skip = readUint(bytes, pos, 2) + 3; break;
        case 0xc9: skip = readUint(bytes, pos, 4) + 5; break;
        case 0xca: skip = 4; break;
        case 0xcb: skip = 8; break;
        case 0xcc: case 0xd0: skip = 1; break;
        case 0xcd: case 0xd1: skip = 2; break;
        case 0xce: case 0xd2: skip = 4; break;
        case 0xcf: case 0xd3: skip = 8; break;
        case 0xd4: skip = 2; break;
        case 0xd5: skip = 3; break;
        case 0xd6: skip = 5; break;
        case 0xd7: skip = 9; break;
        case 0xd8: skip = 17; break;
        case 0xd9: strLength = bytes[pos]; pos += 1; break;
        case 0xda: strLength = readUint(bytes, pos, 2); pos += 2; break;
        case 0xdb: strLength = readUint(bytes, pos, 4); pos += 4; break;
        case 0xdc: pending += readUint(bytes, pos, 2); pos += 2; break;
        case 0xdd: pending += readUint(bytes, pos, 4); pos += 4; break;
        case 0xde: pending += 2 * readUint(bytes, pos, 2); pos += 2; break;
        case 0xdf: pending += 2 * readUint(bytes, pos, 4); pos += 4; break;
      }
    }
    if (strLength > 0) {
      const stop = pos + strLength;
      if (stop > end || Number.isNaN(stop)) return;
      if (onString) onString(pos, stop);
      // Plain ASCII needs no native call; most keys and values are ASCII.
      for (let i = pos; i < stop; i++) {
        if (bytes[i] >= 0x80) {
          if (!isUtf8(bytes.subarray(pos, stop))) {
            throw new WireError('invalid_utf8', 'frame holds a string that is not valid UTF-8');
          }
          break;
        }
      }
      pos = stop;
    } else {
      pos += skip;
    }
  }
}

function readUint(bytes, pos, size) {
  let value = 0;
  for (let i = 0; i < size; i++) value = value * 256 + bytes[pos + i];
  return value;
}

// An Encoder that refuses strings without a UTF-8 form. Every string, map
// keys included, goes through encodeString (in 2.x and 3.x alike), so the
// check costs one native scan per string and no walk of its own. (Short
// strings would go out as invalid UTF-8, long ones, through TextEncoder, with
// U+FFFD in place of the surrogate.)
function checkedEncoderClass(lib) {
  if (typeof lib.Encoder.prototype.encodeString !== 'function') {
    return class extends lib.Encoder {
      get checksStrings() {
        return false;
      }
    };
  }
  return class CheckedEncoder extends lib.Encoder {
    get checksStrings() {
      return true;
    }

    encodeString(s) {
      checkWellFormed(s);
      return super.encodeString(s);
    }
  };
}

// The same check as a walk of the value, for an encoder without
// encodeString. Too deep a value is left to the encoder, which refuses it.
function checkStrings(value, depth) {
  if (typeof value === 'string') {
    checkWellFormed(value);
    return;
  }
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value) || depth > 128) return;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) checkStrings(value[i], depth + 1);
    return;
  }
  for (const key of Object.keys(value)) {
    checkWellFormed(key);
    checkStrings(value[key], depth + 1);
  }
}

// A map decodes to a plain object, whose keys are strings. MessagePack
// keys of other types become strings too: a bin key its bytes as Latin-1
// (one character per byte, so Buffer.from(key, 'latin1') gives the bytes
// back), nil and booleans their names. (Numbers stay as they are: the
// object turns them into strings itself.) A map or array as a key stays
// refused. Versions 2.x of the library ignore this option and refuse
// every key that is not a string or a number.
function objectKey(key) {
  switch (typeof key) {
    case 'string':
    case 'number':
      return key;
    case 'boolean':
    case 'bigint':
      return String(key);
    default:
      if (key === null) return 'null';
      if (key instanceof Uint8Array) return Buffer.from(key.buffer, key.byteOffset, key.length).toString('latin1');
      throw new WireError('invalid_payload', 'a map key is a map or an array');
  }
}

// The library decodes an ext of type -1 (MessagePack's timestamp) to a
// Date, which keeps milliseconds only and is written back as another ext,
// and refuses the whole frame when that ext is no valid timestamp. The
// protocol has every ext reach the handler as an ExtData and go back as it
// came (docs/protocol.md section 3), so type -1 decodes to an ExtData like
// the others; a Date in a result is still written as a timestamp.
function extensionCodec(lib) {
  if (typeof lib.ExtensionCodec !== 'function' || typeof lib.encodeTimestampExtension !== 'function') return undefined;
  const codec = new lib.ExtensionCodec();
  codec.register({
    type: -1,
    encode: (value) => lib.encodeTimestampExtension(value),
    decode: (data, type) => new lib.ExtData(type, data),
  });
  return codec;
}

function createMsgpackCodec() {
  const lib = loadMsgpack();
  const extensions = extensionCodec(lib);
  // Reused instances keep their scratch buffers between frames.
  // maxDepth: what the host reads (snakepit_protocol::MAX_DEPTH is 127 with
  // the frame's own map; the library's default stops at 100).
  const encoder = new (checkedEncoderClass(lib))({ maxDepth: 128, extensionCodec: extensions });
  const decoder = new lib.Decoder({ mapKeyConverter: objectKey, extensionCodec: extensions });
  const shared = typeof encoder.encodeSharedRef === 'function';

  function encodeFrame(value) {
    if (!encoder.checksStrings) checkStrings(value, 0);
    // encodeSharedRef (v3) returns a view of the encoder's own buffer, so the
    // only copy is into the frame; with v2's encode() there is one more.
    const body = shared ? encoder.encodeSharedRef(value) : encoder.encode(value);
    const frame = Buffer.allocUnsafe(HEADER_SIZE + body.length);
    frame.writeUInt32BE(body.length, 0);
    frame.set(body, HEADER_SIZE);
    return frame;
  }

  function decodePayload(payload) {
    checkMsgpackStrings(payload);
    let value;
    try {
      value = decoder.decode(payload);
    } catch (err) {
      if (!(err && /__proto__/.test(err.message))) {
        throw new WireError('invalid_payload', 'frame is not valid MessagePack');
      }
      value = decodeWithProtoKeys(decoder, payload);
    }
    return requireMap(value);
  }

  return { name: 'msgpack', encodeFrame, decodePayload };
}

const PROTO = Buffer.from('__proto__');

// The library refuses a map key `__proto__` (its maps are plain objects,
// where assigning that key would set the prototype). JSON.parse makes it an
// own property, and so does this slower way, taken only for such a frame:
// every str `__proto__` in a copy of the payload becomes a stand-in of the
// same length found nowhere in the payload, and after decoding the stand-in
// becomes `__proto__` again, as a key (an own property, in its place) or
// as a value.
function decodeWithProtoKeys(decoder, payload) {
  let standIn = null;
  for (let n = 0; standIn === null; n++) {
    const candidate = Buffer.from(`\x01sp${n.toString(36).padStart(6, '0')}`);
    if (Buffer.from(payload.buffer, payload.byteOffset, payload.length).indexOf(candidate) < 0) {
      standIn = candidate;
    }
  }
  const copy = Buffer.from(payload);
  checkMsgpackStrings(copy, (start, stop) => {
    if (stop - start === PROTO.length && PROTO.equals(copy.subarray(start, stop))) {
      standIn.copy(copy, start);
    }
  });
  let value;
  try {
    value = decoder.decode(copy);
  } catch (_) {
    throw new WireError('invalid_payload', 'frame is not valid MessagePack');
  }
  return restoreProtoKeys(value, standIn.toString(), 0);
}

function restoreProtoKeys(value, standIn, depth) {
  if (typeof value === 'string') return value === standIn ? '__proto__' : value;
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value) || depth > 128) {
    return value;
  }
  if (Array.isArray(value)) return value.map((v) => restoreProtoKeys(v, standIn, depth + 1));
  if (!isMap(value)) return value; // an ext value stays what the decoder made of it
  const out = {};
  for (const key of Object.keys(value)) {
    Object.defineProperty(out, key === standIn ? '__proto__' : key, {
      value: restoreProtoKeys(value[key], standIn, depth + 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

const jsonCodec = Object.freeze({
  name: 'json',
  encodeFrame: encodeJsonFrame,
  decodePayload: decodeJsonPayload,
});

// `name` is json or msgpack, read as the Python and Ruby bridges read
// SNAKEPIT_CODEC: case and the spaces around it do not count, and empty is
// json. Anything else, a name that is no string (a number, say) included,
// is a configuration mistake worth failing loudly for, since pool and
// worker must agree.
function getCodec(name) {
  const given = typeof name === 'string' ? name.trim() : name;
  const codec = given === undefined || given === null || given === '' ? 'json' : given;
  if (typeof codec === 'string' && codec.toLowerCase() === 'json') return jsonCodec;
  if (typeof codec === 'string' && codec.toLowerCase() === 'msgpack') return createMsgpackCodec();
  const shown = typeof name === 'string' ? JSON.stringify(name) : inspect(name);
  throw new Error(`unknown codec ${shown}: expected json or msgpack`);
}

// ---------------------------------------------------------------------------
// Framing

// Splits a byte stream into frame payloads. Payloads that arrive whole inside
// one chunk are handed out as views of that chunk; a payload split across
// chunks is copied once into a buffer of its exact size, so a large frame
// never costs more than one copy however many reads it takes.
class FrameReader {
  constructor({ onFrame, onError, maxFrameSize = DEFAULT_MAX_FRAME_SIZE }) {
    this.onFrame = onFrame;
    this.onError = onError;
    this.maxFrameSize = maxFrameSize;
    this.header = Buffer.alloc(HEADER_SIZE);
    this.headerFilled = 0;
    this.body = null; // payload being assembled across chunks
    this.bodyFilled = 0;
    this.discard = 0; // bytes of an oversized frame still to skip
  }

  push(chunk) {
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      if (this.discard > 0) {
        const n = Math.min(this.discard, end - pos);
        this.discard -= n;
        pos += n;
        continue;
      }
      if (this.body !== null) {
        const n = Math.min(this.body.length - this.bodyFilled, end - pos);
        chunk.copy(this.body, this.bodyFilled, pos, pos + n);
        this.bodyFilled += n;
        pos += n;
        if (this.bodyFilled === this.body.length) {
          const payload = this.body;
          this.body = null;
          this.onFrame(payload);
        }
        continue;
      }
      let length;
      if (this.headerFilled === 0 && end - pos >= HEADER_SIZE) {
        length = chunk.readUInt32BE(pos);
        pos += HEADER_SIZE;
      } else {
        const n = Math.min(HEADER_SIZE - this.headerFilled, end - pos);
        chunk.copy(this.header, this.headerFilled, pos, pos + n);
        this.headerFilled += n;
        pos += n;
        if (this.headerFilled < HEADER_SIZE) return;
        this.headerFilled = 0;
        length = this.header.readUInt32BE(0);
      }
      if (length > this.maxFrameSize) {
        // Skipping the payload keeps the stream in step, so the worker can
        // report the error and go on serving.
        this.discard = length;
        this.onError(
          new WireError(
            'too_large',
            `frame of ${length} bytes exceeds the maximum of ${this.maxFrameSize} bytes`
          )
        );
        continue;
      }
      if (end - pos >= length) {
        const payload = chunk.subarray(pos, pos + length);
        pos += length;
        this.onFrame(payload);
      } else {
        this.body = Buffer.allocUnsafe(length);
        this.bodyFilled = 0;
      }
    }
  }

  // The input ended; anything half-read is a truncated frame.
  end() {
    if (this.headerFilled > 0 || this.body !== null) {
      this.headerFilled = 0;
      this.body = null;
      this.onError(new WireError('truncated', 'the stream ended inside a frame'));
    }
  }
}

// ---------------------------------------------------------------------------
// Message validation

function requireMap(value) {
  if (!isMap(value)) throw new WireError('wrong_type', 'frame is not a map');
  return value;
}

// A decoded map is a plain object. Arrays, bin values (Uint8Array) and ext
// values (ExtData, and the Date that the timestamp extension decodes to)
// are objects too, but not maps.
function isMap(value) {
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function requireField(msg, field, check, what) {
  if (!(field in msg) || msg[field] === undefined) {
    throw new WireError('missing_field', `frame lacks the field ${field}`);
  }
  if (!check(msg[field])) {
    throw new WireError('wrong_type', `field ${field} must be ${what}`);
  }
}

const isInteger = (v) => Number.isInteger(v);
const isBool = (v) => typeof v === 'boolean';
const isString = (v) => typeof v === 'string';

function validateError(error) {
  if (typeof error === 'string') return;
  if (!isMap(error)) throw new WireError('wrong_type', 'field error must be a string or a map');
  requireField(error, 'type', isString, 'a string');
  requireField(error, 'message', isString, 'a string');
  if (error.traceback !== undefined && error.traceback !== null && !isString(error.traceback)) {
    throw new WireError('wrong_type', 'field traceback must be a string');
  }
}

// Checks a frame going from the worker to the pool, as the pool would. The
// worker never reads these; tests and tools use it to check the worker's
// output.
function validateToPool(msg) {
  requireMap(msg);
  const type = msg.type === undefined || msg.type === null ? 'response' : msg.type;
  switch (type) {
    case 'response':
      requireField(msg, 'id', isInteger, 'an integer');
      requireField(msg, 'success', isBool, 'a boolean');
      if (msg.success) {
        if (!('result' in msg)) throw new WireError('missing_field', 'frame lacks the field result');
      } else {
        if (!('error' in msg)) throw new WireError('missing_field', 'frame lacks the field error');
        validateError(msg.error);
      }
      break;
    case 'hello':
      requireField(msg, 'protocol', isInteger, 'an integer');
      if (msg.capabilities !== undefined && !isMap(msg.capabilities)) {
        throw new WireError('wrong_type', 'field capabilities must be a map');
      }
      break;
    case 'chunk':
      requireField(msg, 'id', isInteger, 'an integer');
      if (!('data' in msg)) throw new WireError('missing_field', 'frame lacks the field data');
      break;
    case 'host_call':
      requireField(msg, 'id', isInteger, 'an integer');
      requireField(msg, 'request_id', isInteger, 'an integer');
      requireField(msg, 'function', isString, 'a string');
      requireField(msg, 'args', isMap, 'a map');
      break;
    default:
      throw new WireError('wrong_type', `unknown frame type ${JSON.stringify(type)}`);
  }
  return msg;
}

// Checks a frame going from the pool to the worker. Requests are checked by
// the worker itself, since a bad request gets a reply naming its id.
function validateToWorker(msg) {
  requireMap(msg);
  const type = msg.type === undefined || msg.type === null ? 'request' : msg.type;
  switch (type) {
    case 'request':
      requireField(msg, 'id', (v) => isInteger(v) && v > 0, 'a positive integer');
      requireField(msg, 'command', isString, 'a string');
      if (msg.args !== undefined && msg.args !== null && !isMap(msg.args)) {
        throw new WireError('wrong_type', 'field args must be a map');
      }
      break;
    case 'cancel':
      requireField(msg, 'id', isInteger, 'an integer');
      break;
    case 'host_reply':
      requireField(msg, 'id', isInteger, 'an integer');
      requireField(msg, 'success', isBool, 'a boolean');
      if (!msg.success) {
        if (!('error' in msg)) throw new WireError('missing_field', 'frame lacks the field error');
        validateError(msg.error);
      }
      break;
    default:
      throw new WireError('wrong_type', `unknown frame type ${JSON.stringify(type)}`);
  }
  return msg;
}

// Decodes a whole byte string of frames at once (tests, tools). Throws the
// first WireError met; `validate` is validateToPool, validateToWorker or
// nothing.
function decodeFrames(bytes, { codec = 'json', validate = null, maxFrameSize } = {}) {
  const c = typeof codec === 'string' ? getCodec(codec) : codec;
  const values = [];
  const reader = new FrameReader({
    maxFrameSize,
    onFrame: (payload) => {
      const value = c.decodePayload(payload);
      values.push(validate ? validate(value) : value);
    },
    onError: (err) => {
      throw err;
    },
  });
  reader.push(Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes));
  reader.end();
  return values;
}

module.exports = {
  PROTOCOL_VERSION,
  DEFAULT_MAX_FRAME_SIZE,
  HEADER_SIZE,
  WireError,
  FrameReader,
  getCodec,
  jsonCodec,
  loadMsgpack,
  validateToPool,
  validateToWorker,
  decodeFrames,
  isMap,
};
