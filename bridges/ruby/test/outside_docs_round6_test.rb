# frozen_string_literal: true

# Round 6 (second wave) of the outside review: docs/bridges.md as a promise
# for the Ruby bridge, checked on a real worker process over pipes.
#
# - "Concurrency and cancellation", Ruby row: the pool cancels with SIGINT
#   "(and a `cancel` frame that arrives during a host call)"; the handler
#   sees `SnakepitBridge::Cancelled`; "In every case the reply is a failed
#   reply of type `Cancelled`", also when the handler swallows the
#   exception and returns a value.
# - "Some consequences": "`Cancelled` is an `Interrupt`, not a
#   `StandardError`, so a plain `rescue => e` does not swallow it; clean up
#   in `ensure`."
# - "The context, side by side": `ctx.chunk(data)` "sends even without a
#   stream"; `ctx.logger` (a `Logger`) logs to stderr.

require_relative "test_helper"
require "fileutils"
require "tmpdir"

class OutsideDocsRound6Test < Minitest::Test
  include ScriptWorkers

  # Liveness only: generous, for a loaded machine.
  LONG = 30

  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"

    worker = SnakepitBridge::Worker.new

    worker.command("swallow") do |_args, ctx|
      seen = begin
        ctx.call_host("slow", {})
        "the host answered"
      rescue Exception => e # swallowed on purpose
        "#{e.class}: #{e.message}"
      end
      warn "AFTER|#{seen}|#{ctx.cancelled?}"
      { "swallowed" => seen }
    end

    worker.command("plain_rescue") do |_args, _ctx|
      begin
        warn "STARTED"
        sleep 60
        "slept"
      rescue => e # a StandardError only: Cancelled passes through
        "swallowed #{e.class}"
      ensure
        warn "ENSURE ran"
      end
    end

    worker.command("unasked_chunk") do |_args, ctx|
      ctx.logger.info("logged by request #{ctx.request_id}")
      { "stream" => ctx.stream?, "sent" => ctx.chunk("unasked") }
    end

    worker.run
  RUBY

  def frames_until_reply(worker, id)
    frames = []
    loop do
      message = worker.recv(LONG)
      frames << message if message["id"] == id || message["request_id"] == id
      return frames if message["type"].nil? && message["id"] == id
    end
  end

  def test_a_cancel_frame_during_a_host_call_answers_cancelled_even_if_the_handler_swallows_it
    %w[json msgpack].each do |codec|
      worker = spawn_worker(codec: codec)
      assert_equal 1, worker.hello["capabilities"]["max_concurrency"]
      worker.request(3, "swallow")
      host_call = worker.recv(LONG)
      assert_equal "host_call", host_call["type"], host_call.inspect
      worker.send_message({ "type" => "cancel", "id" => 3 })
      frames = frames_until_reply(worker, 3)
      assert_equal 1, frames.size, frames.inspect
      assert_equal false, frames[0]["success"]
      assert_equal "Cancelled", frames[0]["error"]["type"], frames.inspect
      seen = worker.stderr_until("AFTER|", timeout: LONG)
      assert_includes seen, "AFTER|SnakepitBridge::Cancelled: request 3 was cancelled|true"
      # The host's late answer is ignored and the same worker serves on.
      worker.send_message({ "type" => "host_reply", "id" => host_call["id"], "success" => true, "result" => 1 })
      reply = worker.call(4, "unasked_chunk")
      assert_equal true, reply["success"], "#{codec}: #{reply.inspect}"
    end
  end

  def test_a_plain_rescue_does_not_swallow_a_sigint_cancellation_and_ensure_runs
    worker = spawn_worker
    worker.request(5, "plain_rescue")
    assert_includes worker.stderr_until("STARTED", timeout: LONG), "STARTED"
    worker.send_message({ "type" => "cancel", "id" => 5 })
    worker.signal("INT")
    frames = frames_until_reply(worker, 5)
    assert_equal 1, frames.size, frames.inspect
    assert_equal "Cancelled", frames[0]["error"]["type"], frames.inspect
    assert_includes worker.stderr_until("ENSURE ran", timeout: LONG), "ENSURE ran"
    reply = worker.call(6, "unasked_chunk")
    assert_equal true, reply["success"], reply.inspect
  end

  def test_ctx_chunk_sends_even_without_a_stream_and_the_logger_writes_to_stderr
    worker = spawn_worker
    worker.request(7, "unasked_chunk")
    frames = frames_until_reply(worker, 7)
    assert_equal [{ "type" => "chunk", "id" => 7, "data" => "unasked" }], frames[0..-2], frames.inspect
    assert_equal({ "stream" => false, "sent" => true }, frames[-1]["result"], frames.inspect)
    assert_includes worker.stderr_until("logged by request 7", timeout: LONG), "logged by request 7"
  end
end
