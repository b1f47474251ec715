# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# Red-team checks of README.md's promises that the other suites leave out:
# host calls meeting odd frames from the pool side, cancels and signals at
# awkward moments, against real worker processes over pipes.
class RedteamReadmeTest < Minitest::Test
  include ScriptWorkers

  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"
    worker = SnakepitBridge::Worker.new
    worker.command("echo") { |args, _ctx| args }
    worker.command("ask") do |args, ctx|
      $stderr.puts "ask: calling"
      $stderr.flush
      begin
        { "answer" => ctx.call_host("f", { "q" => args["q"] }) }
      rescue SnakepitBridge::HostCallError => e
        { "host_error" => [e.error_type, e.message] }
      end
    end
    # Computes (no host call) until the file args["go"] exists, then asks the host.
    worker.command("compute_then_ask") do |args, ctx|
      $stderr.puts "compute: started"
      $stderr.flush
      sleep 0.01 until File.exist?(args["go"])
      begin
        { "answer" => ctx.call_host("f", {}) }
      ensure
        $stderr.puts "compute: cancelled?=#{ctx.cancelled?}"
        $stderr.flush
      end
    end
    # Leaves a thread that sends a chunk after the reply, and records what
    # chunk returned in the file args["out"].
    worker.command("chunk_late") do |args, ctx|
      ctx.chunk({ "early" => true })
      Thread.new do
        sleep 0.3
        File.write(args["out"], ctx.chunk({ "late" => true }).inspect)
      end
      "done"
    end
    worker.run
  RUBY

  def host_call(worker)
    loop do
      message = worker.recv
      return message if message["type"] == "host_call"
    end
  end

  # README: "SIGTERM or the end of stdin stops the worker with exit status
  # 0", also while its handler waits for a host reply.
  def test_sigterm_while_a_handler_waits_in_call_host_exits_zero
    worker = spawn_worker
    worker.request(1, "ask", { "q" => 1 })
    assert_equal "f", host_call(worker)["function"]
    worker.signal("TERM")
    status = worker.wait(10)
    refute_nil status, "still running after SIGTERM; stderr:\n#{worker.stderr}"
    assert_equal 0, status.exitstatus, worker.stderr
  end

  # README: "`ctx.call_host(function, args = {})` | call a function the host
  # registered and wait for its answer". Host replies for other ids (stale,
  # of the wrong type) are passed over, an unknown frame type gets its
  # ProtocolError (id 0) and the wait goes on; only the reply with the host
  # call's id answers it. Nothing else goes out.
  def test_stray_host_replies_and_odd_frames_during_a_host_call_leave_it_waiting_for_its_own
    %w[json msgpack].each do |codec|
      worker = spawn_worker(codec: codec)
      worker.request(1, "ask", { "q" => codec })
      call = host_call(worker)
      [call["id"] + 1, 0, -1, "1", nil].each do |id|
        worker.send_message({ "type" => "host_reply", "id" => id, "success" => true, "result" => "wrong" })
      end
      worker.send_message({ "type" => "cancel", "id" => 999 })
      worker.send_message({ "type" => "hello", "protocol" => 1 })
      error = worker.recv
      assert_equal [0, false, "ProtocolError"], [error["id"], error["success"], error.dig("error", "type")], codec
      worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true, "result" => "right" })
      reply = worker.recv
      assert_equal [1, true, { "answer" => "right" }], [reply["id"], reply["success"], reply["result"]], codec
      assert_equal({ "x" => 1 }, worker.call(2, "echo", { "x" => 1 })["result"], codec)
      worker.close_stdin
      assert_equal 0, worker.wait.exitstatus
      assert_equal "", worker.drain_stdout(0.1), "#{codec}: frames nobody asked for"
    end
  end

  # README: a failed host call raises `HostCallError` (`#error_type`,
  # `#message`); docs/protocol.md allows `error` as a map or a plain string.
  def test_a_failed_host_reply_with_a_map_or_a_string_error_raises_host_call_error
    worker = spawn_worker
    worker.request(1, "ask", {})
    call = host_call(worker)
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => false,
                          "error" => { "type" => "UnknownFunction", "message" => "no f" } })
    assert_equal({ "host_error" => ["UnknownFunction", "no f"] }, worker.recv["result"])
    worker.request(2, "ask", {})
    call = host_call(worker)
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => false, "error" => "plain" })
    assert_equal({ "host_error" => %w[HostError plain] }, worker.recv["result"])
  end

  # README: "A `cancel` frame that arrives while the handler waits in
  # `call_host` cancels it the same way." One that arrived while the
  # handler was still computing, before its host call, is waiting in stdin
  # when the host call starts: the call is cancelled all the same (a
  # `Cancelled` reply, exactly one), and the worker serves on.
  def test_a_cancel_that_arrived_before_the_host_call_cancels_it
    worker = spawn_worker
    go = File.join(@dir, "go")
    worker.request(1, "compute_then_ask", { "go" => go })
    worker.stderr_until("compute: started")
    worker.send_message({ "type" => "cancel", "id" => 1 })
    sleep 0.1
    File.write(go, "")
    reply = nil
    loop do
      reply = worker.recv
      break unless reply["type"] == "host_call"
    end
    assert_equal [1, false, "Cancelled"], [reply["id"], reply["success"], reply.dig("error", "type")], reply.inspect
    assert_includes worker.stderr_until("compute: cancelled?=true"), "compute: cancelled?=true"
    assert_equal({ "y" => 2 }, worker.call(2, "echo", { "y" => 2 })["result"])
    worker.close_stdin
    assert_equal 0, worker.wait.exitstatus
    assert_equal "", worker.drain_stdout(0.1), "a second reply for request 1"
  end

  # protocol.md: "a chunk sent after the request's final response is a
  # protocol violation"; README: `chunk` is "safe from other threads". A
  # thread the handler left behind gets false from chunk once the call is
  # answered, and nothing follows the reply.
  def test_a_chunk_from_a_thread_after_the_reply_is_not_sent
    Dir.mktmpdir do |dir|
      out = File.join(dir, "late")
      worker = spawn_worker
      worker.request(1, "chunk_late", { "out" => out }, stream: true)
      first = worker.recv
      assert_equal ["chunk", { "early" => true }], [first["type"], first["data"]]
      reply = worker.recv
      assert_equal [1, "done"], [reply["id"], reply["result"]]
      deadline = Time.now + 10
      sleep 0.05 until File.exist?(out) || Time.now > deadline
      assert_equal "false", File.read(out)
      worker.close_stdin
      assert_equal 0, worker.wait.exitstatus
      assert_equal "", worker.drain_stdout(0.1), "a frame after the reply"
    end
  end
end
