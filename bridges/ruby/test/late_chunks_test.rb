# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# Chunks from a thread after the reply, and host calls nested too deep
# (write_payload with a block and `after:`, Context#chunk, call_host), against real
# worker processes over pipes.
class LateChunksTest < Minitest::Test
  include ScriptWorkers

  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"
    worker = SnakepitBridge::Worker.new
    GO = Queue.new
    DONE = Queue.new
    # Leaves a thread that sends a chunk of this (answered) call once told,
    # and records what chunk returned in the file args["out"].
    worker.command("leave") do |args, ctx|
      Thread.new do
        GO.pop
        result = begin
          ctx.chunk({ "late" => true }).inspect
        rescue Exception => e # rubocop:disable Lint/RescueException
          "raised #{e.class}"
        end
        File.write(args["out"], result)
        DONE.push(true)
      end
      "left"
    end
    # Runs while the left thread chunks (so the worker is inside a handler,
    # and the left thread's write goes through Thread.handle_interrupt),
    # then sends a chunk of its own: the write lock must be free again.
    worker.command("meanwhile") do |_args, ctx|
      GO.push(true)
      DONE.pop
      sent = ctx.chunk({ "mine" => 1 })
      { "sent" => sent }
    end
    # A host call whose arguments nest args["levels"] arrays below `v`.
    worker.command("deep_host") do |args, ctx|
      v = 1
      args["levels"].times { v = [v] }
      begin
        { "answer" => ctx.call_host("f", { "v" => v }) }
      rescue SnakepitBridge::HostCallError => e
        { "host_error" => e.error_type }
      end
    end
    worker.command("echo") { |args, _ctx| args }
    worker.run
  RUBY

  def nesting(value)
    depth = 0
    while value.is_a?(Array)
      depth += 1
      value = value.first
    end
    depth
  end

  # README: `ctx.chunk` "returns false, sending nothing, once the call is
  # answered (from a thread the handler left running)", and `chunk` is
  # "safe from other threads". Here the left thread chunks while the next
  # request's handler runs (the write goes through Thread.handle_interrupt,
  # and the `return false` of the block leaves the lock and the interrupt
  # mask): false, nothing sent, and the running handler's own chunk and
  # reply go out.
  def test_a_late_chunk_while_the_next_handler_runs_returns_false_and_frees_the_lock
    out = File.join(@dir, "late")
    worker = spawn_worker
    assert_equal "left", worker.call(1, "leave", { "out" => out }, stream: true)["result"]
    worker.request(2, "meanwhile", {}, stream: true)
    chunk = worker.recv
    assert_equal ["chunk", 2, { "mine" => 1 }], [chunk["type"], chunk["id"], chunk["data"]]
    reply = worker.recv
    assert_equal [2, true, { "sent" => true }], [reply["id"], reply["success"], reply["result"]]
    assert_equal "false", File.read(out)
    assert_equal({ "x" => 1 }, worker.call(3, "echo", { "x" => 1 })["result"])
    worker.close_stdin
    assert_equal 0, worker.wait.exitstatus
    assert_equal "", worker.drain_stdout(0.1), "a frame nobody asked for"
  end

  # protocol.md: a frame may nest 127 levels (its own map included), and
  # the host refuses deeper host-call arguments as TooDeep. Under JSON the
  # bridge refuses them itself (HostCallError TooDeep, nothing sent), at
  # exactly the host's limit: 127 levels go out whole, 128 do not, and the
  # codec works on afterwards (its reused JSON state's depth was reset).
  def test_host_call_arguments_at_the_nesting_limit_go_out_and_one_more_is_too_deep
    worker = spawn_worker
    worker.request(1, "deep_host", { "levels" => 125 })
    call = worker.recv
    assert_equal "host_call", call["type"]
    assert_equal 125, nesting(call.dig("args", "v"))
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true, "result" => "ok" })
    assert_equal({ "answer" => "ok" }, worker.recv["result"])

    worker.request(2, "deep_host", { "levels" => 126 })
    reply = worker.recv
    assert_equal [2, true, { "host_error" => "TooDeep" }], [reply["id"], reply["success"], reply["result"]]

    worker.request(3, "deep_host", { "levels" => 3 })
    call = worker.recv
    assert_equal ["host_call", 3], [call["type"], nesting(call.dig("args", "v"))]
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true, "result" => "again" })
    assert_equal({ "answer" => "again" }, worker.recv["result"])
    worker.close_stdin
    assert_equal 0, worker.wait.exitstatus
    assert_equal "", worker.drain_stdout(0.1), "a frame nobody asked for"
  end
end
