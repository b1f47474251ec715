# frozen_string_literal: true

require_relative "test_helper"

# ctx.call_host from threads a handler starts, in both codecs: while the
# call runs every thread gets its own reply; once the call has ended the
# ctx's host calls raise Cancelled ("already finished"), and the worker
# serves on. Before the fix a thread's host call read stdin itself, beside
# the serving thread: replies went to the wrong thread (host calls that
# never ended) and a left-behind thread read the next calls' frames.
class HostCallThreadsTest < Minitest::Test
  WORKER = File.join(__dir__, "host_threads_worker.rb")

  def codecs
    require "msgpack"
    %w[json msgpack]
  rescue LoadError
    %w[json]
  end

  def start(codec)
    w = WorkerProcess.new(WORKER, codec: codec)
    @workers << w
    w
  end

  def setup
    @workers = []
    @host_calls = []
  end

  def teardown
    @workers.each(&:stop)
  end

  def answer(w, call, fail: false)
    reply = if fail
              { "type" => "host_reply", "id" => call["id"], "success" => false,
                "error" => { "type" => "Nope", "message" => "refused" } }
            else
              { "type" => "host_reply", "id" => call["id"], "success" => true,
                "result" => { "echo" => call["args"] } }
            end
    w.send_message(reply)
  end

  def host_calls_until(w, count)
    Array.new(count) do
      msg = w.recv
      assert_equal "host_call", msg["type"], "a host call expected, got #{msg.inspect}"
      msg
    end
  end

  # Reads frames until request +id+'s reply, answering host calls seen
  # meanwhile (or holding them, with +hold+); [reply, held].
  def reply_to(w, id, hold: false)
    held = []
    loop do
      msg = w.recv
      if msg["type"] == "host_call"
        @host_calls << msg
        hold ? held << msg : answer(w, msg)
      elsif msg["type"].nil? && msg["id"] == id
        return [msg, held]
      end
    end
  end

  def call(w, id, command, args)
    w.request(id, command, args)
    reply_to(w, id).first
  end

  def assert_serves(w, id)
    assert_equal true, call(w, id, "ping", {})["success"], w.stderr
  end

  def test_every_thread_gets_its_own_reply_while_the_call_runs
    codecs.each do |codec|
      w = start(codec)
      [1, 2, 3].each do |id|
        w.request(id, "fan_out", { "n" => 4, "here" => true })
        calls = host_calls_until(w, 5)
        assert_equal [id], calls.map { |c| c["request_id"] }.uniq
        # Answered in reverse order, one failed: each reply must reach the
        # thread that made the call.
        calls.reverse_each { |c| answer(w, c, fail: c["args"]["i"] == 0) }
        reply, = reply_to(w, id)
        assert_equal true, reply["success"], "#{codec}: #{reply.inspect} #{w.stderr}"
        threads = reply["result"]["threads"]
        assert_equal({ "type" => "HostCallError", "message" => "refused" }, threads[0], codec)
        assert_equal((1..3).map { |i| { "result" => { "echo" => { "i" => i } } } }, threads[1..], codec)
        assert_equal({ "result" => { "echo" => { "i" => "here" } } }, reply["result"]["here"], codec)
      end
      assert_serves(w, 9)
    end
  end

  def test_a_host_call_after_the_call_ended_raises_cancelled
    codecs.each do |codec|
      w = start(codec)
      5.times do |n|
        tag = "after-#{n}"
        base = 10 * (n + 1)
        assert_equal "left", call(w, base, "leave", { "tag" => tag })["result"]
        assert_equal "going", call(w, base + 1, "go", { "tag" => tag })["result"]
        outcome = call(w, base + 2, "outcome", { "tag" => tag })["result"]
        assert_equal "Cancelled", outcome["type"], "#{codec}: #{outcome.inspect} #{w.stderr}"
        assert_includes outcome["message"], "request #{base} is already finished"
      end
      assert_empty @host_calls, "no host call may leave for a finished request"
      assert_serves(w, 99)
    end
  end

  def test_a_host_call_waiting_when_the_call_ends_raises_cancelled
    codecs.each do |codec|
      w = start(codec)
      3.times do |n|
        tag = "waiting-#{n}"
        base = 10 * (n + 1)
        w.request(base, "leave_waiting", { "tag" => tag })
        # The pool answers only after the call's reply.
        reply, held = reply_to(w, base, hold: true)
        assert_equal "left", reply["result"], w.stderr
        outcome = call(w, base + 1, "outcome", { "tag" => tag })["result"]
        assert_equal "Cancelled", outcome["type"], "#{codec}: #{outcome.inspect} #{w.stderr}"
        assert_includes outcome["message"], "request #{base} is already finished"
        held.each { |c| answer(w, c) } # too late: dropped
        assert_serves(w, base + 2)
      end
    end
  end

  def test_a_cancel_frame_fails_every_waiting_host_call_of_its_call
    codecs.each do |codec|
      w = start(codec)
      w.request(1, "fan_out", { "n" => 3, "here" => true })
      calls = host_calls_until(w, 4)
      w.send_message({ "type" => "cancel", "id" => 1 })
      reply, = reply_to(w, 1)
      assert_equal "Cancelled", reply.dig("error", "type"), "#{codec}: #{reply.inspect} #{w.stderr}"
      calls.each { |c| answer(w, c) }
      assert_serves(w, 2)
    end
  end

  # The serving thread sleeps while a thread it started waits for the host
  # and reads the call's cancel frame: the handler is interrupted as by
  # SIGINT, and the pool's SIGINT that follows is ignored.
  def test_a_cancel_frame_read_by_a_thread_interrupts_the_handler
    codecs.each do |codec|
      w = start(codec)
      w.request(1, "sleep_while_asking", { "tag" => "asker" })
      host_calls_until(w, 1)
      w.send_message({ "type" => "cancel", "id" => 1 })
      reply, = reply_to(w, 1)
      assert_equal "Cancelled", reply.dig("error", "type"), "#{codec}: #{reply.inspect} #{w.stderr}"
      outcome = call(w, 2, "outcome", { "tag" => "asker" })["result"]
      assert_equal "Cancelled", outcome["type"], "#{codec}: #{outcome.inspect}"
      assert_includes outcome["message"], "request 1 was cancelled"
      w.signal("INT") # the pool's, late: ignored
      assert_serves(w, 3)
    end
  end

  def test_sigint_cancels_a_call_whose_threads_wait_for_the_host
    codecs.each do |codec|
      w = start(codec)
      [1, 2].each do |id|
        w.request(id, "fan_out", { "n" => 3, "here" => id == 1 })
        calls = host_calls_until(w, id == 1 ? 4 : 3)
        w.signal("INT")
        reply, = reply_to(w, id)
        assert_equal "Cancelled", reply.dig("error", "type"), "#{codec}: #{reply.inspect} #{w.stderr}"
        calls.each { |c| answer(w, c) }
        assert_serves(w, id + 10)
      end
    end
  end
end
