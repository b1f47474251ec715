# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# The cap on host calls waiting for their replies: the pool replaces a
# worker with more than 256 in flight, so the bridge writes at most 256 and
# holds the rest, in order, until a reply frees a place. The fake pool here
# counts what it has read and not yet answered, as the pool does, and fails
# the test on the 257th.
class HostCallCapTest < Minitest::Test
  include ScriptWorkers

  CAP = 256

  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"

    worker = SnakepitBridge::Worker.new

    # A size from the bridge's own bookkeeping of host calls, read under its
    # lock (empty for a bridge that keeps no such table).
    in_bridge = lambda do |name, empty, &measure|
      worker.instance_variable_get(:@host_lock).synchronize do
        measure.call(worker.instance_variable_get(name) || empty)
      end
    end

    # Waits (generously) until +count+ host calls are held in the bridge,
    # then tells the pool with a chunk whether they were.
    held = lambda do |ctx, count|
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
      seen = 0
      loop do
        seen = in_bridge.call(:@host_held, []) { |held| held.count { |w| !w.done? } }
        break if seen >= count || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.01
      end
      ctx.chunk({ "held" => seen })
    end

    # +n+ host calls at once, one per thread; each thread's answer or error.
    worker.command("many") do |args, ctx|
      threads = Array.new(args.fetch("n")) do |i|
        Thread.new do
          { "ok" => ctx.call_host("echo", { "i" => i }) }
        rescue StandardError, SnakepitBridge::Cancelled => e
          { "error" => e.class.name.split("::").last }
        end
      end
      held.call(ctx, args["wait_held"]) if args["wait_held"]
      threads.map(&:value)
    end

    # One host call on a thread of its own, reported held before it is
    # answered.
    worker.command("one_held") do |_args, ctx|
      thread = Thread.new { ctx.call_host("echo", { "i" => "late" }) }
      held.call(ctx, 1)
      thread.value
    end

    # 256 host calls from threads, then one from the handler's own thread,
    # which is held.
    worker.command("main_held") do |_args, ctx|
      threads = Array.new(256) do |i|
        Thread.new do
          ctx.call_host("echo", { "i" => i })
        rescue SnakepitBridge::Cancelled
          nil
        end
      end
      # The 256 take every place first, so the handler's own is the one
      # held.
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
      until in_bridge.call(:@host_in_flight, {}, &:size) >= 256 ||
            Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
        sleep 0.01
      end
      Thread.new { held.call(ctx, 1) }
      ctx.call_host("echo", { "i" => "main" })
      threads.each(&:join)
      "not cancelled"
    end

    worker.run
  RUBY

  def host_call?(message)
    message["type"] == "host_call"
  end

  def answer(worker, call)
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true,
                          "result" => call["args"] })
  end

  # Reads request +id+'s frames until its reply, acting as the pool: every
  # host call is checked against the cap (the host calls the pool has read
  # and not answered: +outstanding+, which this updates) and must be
  # request +id+'s. The block gets each host call, once counted, and each
  # chunk. The reply.
  def serve(worker, id, outstanding)
    loop do
      message = worker.recv(120)
      if host_call?(message)
        outstanding << message
        assert_operator outstanding.size, :<=, CAP,
                        "#{outstanding.size} host calls written without a reply"
        assert_equal id, message["request_id"], "a host call of another call: #{message.inspect}"
      elsif message["type"].nil? && message["id"] == id
        return message
      elsif message["type"] != "chunk"
        flunk "unexpected frame #{message.inspect}"
      end
      yield message if block_given?
    end
  end

  # Answers the late host calls, then checks the worker still makes and
  # gets host calls: nothing of the earlier call is sent, and places held
  # by its host calls were all given back.
  def answer_late_and_check(worker, outstanding)
    answer(worker, outstanding.shift) until outstanding.empty?
    worker.request(9, "many", { "n" => CAP })
    reply = serve(worker, 9, outstanding) do |message|
      answer(worker, outstanding.shift) until outstanding.empty? if outstanding.size == CAP
      assert host_call?(message)
    end
    assert reply["success"], reply.inspect
    assert_equal (0...CAP).map { |i| { "ok" => { "i" => i } } }, reply["result"]
  end

  def test_300_host_calls_at_once_are_all_answered_never_more_than_256_waiting
    worker = spawn_worker
    total = 300
    # The handler reports (a chunk) once the 44 beyond the cap are held.
    worker.request(1, "many", { "n" => total, "wait_held" => total - CAP })
    outstanding = []
    seen = 0
    most = 0
    held = nil
    reply = serve(worker, 1, outstanding) do |message|
      if host_call?(message)
        seen += 1
        most = [most, outstanding.size].max
      else
        held = message["data"]["held"]
      end
      # Nothing is answered before 256 wait and the rest are held; then
      # one answer per new host call, and once all have come, the rest one
      # by one.
      next unless held && (outstanding.size == CAP || seen == total)

      answer(worker, outstanding.shift)
      answer(worker, outstanding.shift) while seen == total && !outstanding.empty?
    end
    assert_equal total - CAP, held
    assert reply["success"], reply.inspect
    assert_equal total, seen
    assert_equal CAP, most
    assert_equal (0...total).map { |i| { "ok" => { "i" => i } } }, reply["result"]
  end

  def test_a_held_host_call_whose_call_is_cancelled_is_never_sent
    worker = spawn_worker
    worker.request(1, "many", { "n" => CAP + 1, "wait_held" => 1 })
    outstanding = []
    held = nil
    reply = serve(worker, 1, outstanding) do |message|
      held = message["data"]["held"] unless host_call?(message)
      # Once 256 are written and the 257th is held, the call is cancelled,
      # leaving the 256 unanswered.
      worker.send_message({ "type" => "cancel", "id" => 1 }) if held && outstanding.size == CAP
    end
    assert_equal 1, held, "the 257th host call was not held"
    refute reply["success"], reply.inspect
    assert_equal "Cancelled", reply["error"]["type"]
    assert_equal CAP, outstanding.size

    # The 256 cancelled host calls still count until their replies are
    # read: the next call's host call waits for one of them.
    worker.request(2, "one_held", {})
    reply = serve(worker, 2, outstanding) do |message|
      if host_call?(message)
        answer(worker, outstanding.pop)
      else
        assert_equal 1, message["data"]["held"], "the new host call was not held"
        answer(worker, outstanding.shift)
      end
    end
    assert reply["success"], reply.inspect
    assert_equal({ "i" => "late" }, reply["result"])
    assert_equal CAP - 1, outstanding.size
    answer_late_and_check(worker, outstanding)
  end

  def test_a_held_host_call_on_the_handlers_thread_is_cancelled_by_sigint_and_never_sent
    worker = spawn_worker
    worker.request(1, "main_held", {})
    outstanding = []
    held = nil
    reply = serve(worker, 1, outstanding) do |message|
      held = message["data"]["held"] unless host_call?(message)
      worker.signal("INT") if held && outstanding.size == CAP
    end
    assert_equal 1, held, "the handler's own host call was not held"
    refute reply["success"], reply.inspect
    assert_equal "Cancelled", reply["error"]["type"]
    assert_equal CAP, outstanding.size
    answer_late_and_check(worker, outstanding)
  end
end
