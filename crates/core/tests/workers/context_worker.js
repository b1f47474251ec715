// docs/bridges.md, "The context, side by side": a handler that reports
// what its context says (tests/context_promises.rs).
const { Worker, HostCallError } = require('snakepit-bridge');

new Worker({
  commands: {
    async context(args, ctx) {
      ctx.log.info('context of request', ctx.requestId); // stderr, not the frames
      ctx.throwIfCancelled(); // not cancelled: returns
      let hostError = null;
      try {
        await ctx.callHost('no.such', {});
      } catch (e) {
        hostError = [e instanceof HostCallError ? 'HostCallError' : String(e), e.type];
      }
      return {
        request_id: ctx.requestId,
        command: ctx.command,
        session_id: ctx.sessionId === undefined ? null : ctx.sessionId,
        worker_id: ctx.workerId,
        traceparent: ctx.traceparent === undefined ? null : ctx.traceparent,
        timeout_ms: ctx.timeoutMs === undefined ? null : ctx.timeoutMs,
        stream: ctx.streamRequested,
        cancelled: ctx.cancelled,
        emitted: ctx.sendChunk('partial'),
        host_error: hostError,
        signal_aborted: ctx.signal.aborted,
        aliases: [ctx.request_id, ctx.session_id === undefined ? null : ctx.session_id, ctx.worker_id, typeof ctx.call_host],
      };
    },
  },
}).run();
