'use strict';

// The built-in commands of the generic Node bridge (protocol.md section 7).
// Their result shapes are those of the original Snakepit's JavaScript bridge,
// plus `pid` in ping; errors are thrown, so they become failed replies of
// type Error. Everything about the worker comes from `ctx.worker`: this file
// imports nothing of the bridge, so worker.js can take its default `ping`
// from here.

const os = require('os');
const util = require('util');

const BRIDGE_TYPE = 'generic_javascript';

// The original bridges stamp results with epoch seconds as a float.
const now = () => Date.now() / 1000;

function ping(args, ctx) {
  const worker = ctx.worker;
  return {
    status: 'ok',
    bridge_type: BRIDGE_TYPE,
    uptime: worker.uptime,
    requests_handled: worker.requestsHandled,
    timestamp: now(),
    worker_id: ctx.workerId || 'unknown',
    echo: args,
    pid: process.pid,
    node_version: process.version,
    platform: process.platform,
  };
}

function echo(args) {
  return { status: 'ok', echoed: args, timestamp: now() };
}

function toNumber(value, name) {
  const n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof n !== 'number' || Number.isNaN(n)) {
    throw new Error(`Invalid number for ${name}: ${JSON.stringify(value)}`);
  }
  return n;
}

// An argument as text for an error message. String() throws on a map whose
// `toString` is not a function; util.inspect describes such a map instead.
function argText(value) {
  try {
    return String(value);
  } catch (_) {
    return util.inspect(value);
  }
}

function compute(args) {
  const operation = args.operation === undefined ? 'add' : args.operation;
  const a = toNumber(args.a === undefined ? 0 : args.a, 'a');
  const b = toNumber(args.b === undefined ? 0 : args.b, 'b');
  let result;
  switch (operation) {
    case 'add':
      result = a + b;
      break;
    case 'subtract':
      result = a - b;
      break;
    case 'multiply':
      result = a * b;
      break;
    case 'divide':
      if (b === 0) throw new Error('Division by zero');
      result = a / b;
      break;
    case 'power':
      result = Math.pow(a, b);
      break;
    case 'sqrt':
      if (a < 0) throw new Error('Square root of negative number');
      result = Math.sqrt(a);
      break;
    default:
      throw new Error(`Unsupported operation: ${argText(operation)}`);
  }
  return { status: 'ok', operation, inputs: { a, b }, result, timestamp: now() };
}

function info(args, ctx) {
  const worker = ctx.worker;
  const memory = process.memoryUsage();
  return {
    status: 'ok',
    bridge_info: {
      name: worker.bridgeName,
      version: worker.bridgeVersion,
      supported_commands: worker.commandNames(),
      uptime: worker.uptime,
      total_requests: worker.requestsHandled,
    },
    system_info: {
      node_version: process.version,
      platform: process.platform,
      arch: process.arch,
      pid: process.pid,
      hostname: os.hostname(),
      cpu_count: os.cpus().length,
      memory_usage: { rss: memory.rss, heap_total: memory.heapTotal, heap_used: memory.heapUsed },
      codec: worker.codecName,
      max_concurrency: worker.maxConcurrency,
    },
    timestamp: now(),
  };
}

// Box-Muller; the second value of each pair is thrown away for simplicity.
function normalSample(mean, std) {
  let u = 0;
  while (u === 0) u = Math.random();
  const v = Math.random();
  return mean + std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

function random(args) {
  const type = args.type === undefined ? 'uniform' : args.type;
  let value;
  switch (type) {
    case 'uniform': {
      const min = toNumber(args.min === undefined ? 0 : args.min, 'min');
      const max = toNumber(args.max === undefined ? 1 : args.max, 'max');
      value = min + Math.random() * (max - min);
      break;
    }
    case 'integer': {
      const min = Math.ceil(toNumber(args.min === undefined ? 0 : args.min, 'min'));
      const max = Math.floor(toNumber(args.max === undefined ? 100 : args.max, 'max'));
      if (max < min) throw new Error(`Invalid range: min ${min} is above max ${max}`);
      value = min + Math.floor(Math.random() * (max - min + 1));
      break;
    }
    case 'normal': {
      const mean = toNumber(args.mean === undefined ? 0 : args.mean, 'mean');
      const std = toNumber(args.std === undefined ? 1 : args.std, 'std');
      value = normalSample(mean, std);
      break;
    }
    default:
      throw new Error(`Unsupported random type: ${argText(type)}`);
  }
  return { status: 'ok', type, parameters: args, value, timestamp: now() };
}

// A fresh object each time, so a worker can add to or override its copy.
function genericCommands() {
  return { ping, echo, compute, info, random };
}

module.exports = { BRIDGE_TYPE, genericCommands, ping };
