# frozen_string_literal: true

require_relative "test_helper"

# A SIGINT that lands before its request's handler starts. The pool gives
# up a call by sending its cancel frame, then SIGINT. When the SIGINT comes
# while no handler runs (the request is still being read or decoded), the
# worker notes it; before the next handler starts it reads what stdin holds
# without waiting, and if the cancel frame of THAT request is there, answers
# it Cancelled "before it started" and never runs it. A SIGINT between calls
# with nothing (or a cancel for another id) in stdin changes nothing.
#
# To land the signal before the handler deterministically, the worker is
# stopped (SIGSTOP) while it waits for input; the request frame (exactly
# 64 KiB, the size of the bridge's reads) and its cancel frame are written
# into a pipe made large enough to hold both, SIGINT is sent, then SIGCONT.
# On SIGCONT the kernel delivers the pending SIGINT before the worker runs
# any code of its own (it has one thread), and the trap runs before the
# request can start; the worker's first read takes the request frame alone,
# leaving the cancel frame in the pipe, so the read-ahead drop (a cancel
# read together with its request) cannot be what answers it. The control
# test sends the same bytes without SIGINT: the request runs and the cancel
# is dropped as too late. Every test runs once per codec.
module SigintEarlyTests
  include CodecFrames

  WORKER = File.join(__dir__, "pipeline_worker.rb") # shout, and ran: the ids that ran
  READ_SIZE = SnakepitBridge::Wire::FrameReader::CHUNK
  F_SETPIPE_SZ = 1031 # Linux

  def setup
    @workers = []
  end

  def teardown
    @workers.each do |w|
      w.signal("CONT") # a worker a failed test left stopped
      w.stop
    end
  end

  def spawn_worker
    worker = WorkerProcess.new(WORKER, codec: codec)
    @workers << worker
    assert_equal "hello", worker.hello["type"]
    # Room for a 64 KiB frame and what follows it while the worker is
    # stopped (the default pipe holds 64 KiB).
    begin
      worker.instance_variable_get(:@to_worker).fcntl(F_SETPIPE_SZ, 1 << 20)
    rescue SystemCallError, NotImplementedError => e
      skip "cannot enlarge the pipe: #{e.message}"
    end
    worker
  end

  # A shout request frame of exactly READ_SIZE bytes, header included.
  def padded_request(id)
    pad = 0
    10.times do
      data = request(id, "shout", { "text" => "big", "pad" => "x" * pad })
      return data if data.bytesize == READ_SIZE

      pad += READ_SIZE - data.bytesize
    end
    flunk "could not size a request frame to #{READ_SIZE} bytes"
  end

  def wait_until(timeout: 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until yield
      return false if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
    true
  end

  def proc_state(pid)
    File.read("/proc/#{pid}/stat").rpartition(")").last.split.first
  end

  # SIGINT pending for the process (shared) or its thread.
  def sigint_pending?(pid)
    bit = 1 << (Signal.list["INT"] - 1)
    File.readlines("/proc/#{pid}/status").any? do |line|
      line.start_with?("SigPnd:", "ShdPnd:") && (line.split[1].to_i(16) & bit).positive?
    end
  end

  def stop_worker(worker)
    worker.signal("STOP")
    assert wait_until { proc_state(worker.pid) == "T" }, "the worker did not stop"
  end

  def cont_worker(worker)
    worker.signal("CONT")
  end

  # +frames+ written to +worker+ while it is stopped, then (with +sigint+)
  # SIGINT, held until the SIGCONT that follows.
  def write_while_stopped(worker, *frames, sigint: false)
    stop_worker(worker)
    frames.each { |frame| worker.send_raw(frame) }
    if sigint
      worker.signal("INT")
      assert sigint_pending?(worker.pid), "SIGINT is held until SIGCONT"
    end
    cont_worker(worker)
  end

  # SIGINT to a worker waiting for input, and time for its trap to run.
  def sigint_while_idle(worker)
    worker.signal("INT")
    assert wait_until { !sigint_pending?(worker.pid) }, "SIGINT still pending"
    sleep 0.3 # the trap runs once the worker is scheduled
    assert worker.alive?, worker.stderr
  end

  def assert_cancelled_before_start(reply, id)
    assert_equal id, reply["id"], reply.inspect
    assert_equal false, reply["success"], reply.inspect
    assert_equal({ "type" => "Cancelled", "message" => "request #{id} was cancelled before it started" },
                 reply["error"])
  end

  def assert_ran(worker, id, expected)
    reply = worker.call(id, "ran")
    assert_equal true, reply["success"], reply.inspect
    assert_equal expected, reply["result"]
  end

  def assert_shouted(reply, id, text)
    assert_equal [id, true, text], [reply["id"], reply["success"], reply["result"]], reply.inspect
  end

  # --- 1. the cancel frame is in stdin when the handler would start ----------

  # The frames read with the cancel while looking for it are queued, not
  # lost: a request behind the cancel runs, in order.
  def test_a_request_behind_the_cancel_found_after_an_early_sigint_still_runs
    worker = spawn_worker
    assert_shouted worker.call(1, "shout", { "text" => "one" }), 1, "ONE"
    write_while_stopped(worker, padded_request(2), cancel(2), request(3, "shout", { "text" => "three" }),
                        sigint: true)
    cancelled, shouted = replies(worker, 2)
    assert_cancelled_before_start(cancelled, 2)
    assert_shouted shouted, 3, "THREE"
    assert_ran worker, 4, [1, 3]
    refute_match(/Error|error/, worker.stderr)
  end

  def test_a_request_signalled_before_its_handler_starts_with_its_cancel_in_stdin_never_runs
    worker = spawn_worker
    assert_shouted worker.call(1, "shout", { "text" => "one" }), 1, "ONE"
    # The pool's order: the cancel frame, then SIGINT. Nothing is read yet:
    # the worker is stopped.
    write_while_stopped(worker, padded_request(2), cancel(2), sigint: true)
    assert_cancelled_before_start(replies(worker, 1).first, 2)
    assert_ran worker, 3, [1] # 2 never ran
    # The worker goes on: the next call runs.
    assert_shouted worker.call(4, "shout", { "text" => "four" }), 4, "FOUR"
    assert_ran worker, 5, [1, 4]
    # Counted as a request dropped while read ahead is: not at all (1, 3,
    # 4, 5 and this ping).
    assert_equal 5, worker.call(6, "ping")["result"]["requests_handled"]
    refute_match(/Error|error/, worker.stderr)
  end

  # The flag set by a SIGINT between calls lasts until the next request
  # starts: a request arriving later with its cancel behind it (not read
  # with it) is still answered Cancelled.
  def test_a_sigint_while_idle_then_a_request_and_its_cancel_never_runs_it
    worker = spawn_worker
    worker.call(1, "shout", { "text" => "one" })
    sigint_while_idle(worker)
    write_while_stopped(worker, padded_request(2), cancel(2))
    assert_cancelled_before_start(replies(worker, 1).first, 2)
    assert_ran worker, 3, [1]
  end

  # The same bytes, written the same way, but no SIGINT: the request is
  # read alone and runs; its cancel, read after it, is too late and dropped.
  # So in the tests above the signal is what cancels it.
  def test_control_the_same_frames_without_sigint_run_the_request
    worker = spawn_worker
    worker.call(1, "shout", { "text" => "one" })
    write_while_stopped(worker, padded_request(2), cancel(2))
    assert_shouted replies(worker, 1).first, 2, "BIG"
    assert_ran worker, 3, [1, 2]
    # No stray reply for the dropped cancel.
    assert_shouted worker.call(4, "shout", { "text" => "four" }), 4, "FOUR"
  end

  # --- 2. a SIGINT between calls and no cancel frame -------------------------

  def test_a_sigint_between_calls_without_a_cancel_frame_cancels_nothing
    worker = spawn_worker
    assert_shouted worker.call(1, "shout", { "text" => "one" }), 1, "ONE"
    sigint_while_idle(worker)
    assert_shouted worker.call(2, "shout", { "text" => "two" }), 2, "TWO"
    # The flag was spent on request 2: 3 runs too.
    assert_shouted worker.call(3, "shout", { "text" => "three" }), 3, "THREE"
    assert_ran worker, 4, [1, 2, 3]
  end

  # The signal lands before the request is read (as in test 1) and more
  # calls are written behind it, but no cancel frame: the look into stdin
  # finds none, the request runs, and the calls read in that look run after
  # it, in order.
  def test_a_sigint_with_the_next_request_unread_and_no_cancel_frame_runs_it
    worker = spawn_worker
    worker.call(1, "shout", { "text" => "one" })
    write_while_stopped(worker, padded_request(2),
                        request(3, "shout", { "text" => "three" }) + request(4, "shout", { "text" => "four" }),
                        sigint: true)
    assert_equal [[2, "BIG"], [3, "THREE"], [4, "FOUR"]],
                 replies(worker, 3).map { |m| [m["id"], m["success"] && m["result"]] }
    assert_ran worker, 5, [1, 2, 3, 4]
  end

  # --- 3. a SIGINT between calls and a cancel for another (finished) id ------

  def test_a_sigint_then_a_cancel_for_a_finished_call_then_a_request_runs_it
    worker = spawn_worker
    assert_shouted worker.call(1, "shout", { "text" => "one" }), 1, "ONE"
    sigint_while_idle(worker)
    # Read while idle: dispatched, too late, dropped.
    worker.send_raw(cancel(1))
    sleep 0.2
    assert_shouted worker.call(2, "shout", { "text" => "two" }), 2, "TWO"
    assert_ran worker, 3, [1, 2]
  end

  # The cancel for finished request 1 is in stdin when request 2's handler
  # would start, so the look after the SIGINT reads it (and request 3
  # behind it): not 2's, so 2 runs; 3 runs after it.
  def test_a_sigint_then_a_request_with_a_cancel_for_another_id_in_stdin_runs_it
    worker = spawn_worker
    assert_shouted worker.call(1, "shout", { "text" => "one" }), 1, "ONE"
    write_while_stopped(worker, padded_request(2), cancel(1), request(3, "shout", { "text" => "three" }),
                        sigint: true)
    assert_equal [[2, "BIG"], [3, "THREE"]],
                 replies(worker, 2).map { |m| [m["id"], m["success"] && m["result"]] }
    assert_ran worker, 4, [1, 2, 3]
  end
end

class SigintEarlyJsonTest < Minitest::Test
  include SigintEarlyTests

  def codec
    "json"
  end
end

class SigintEarlyMsgpackTest < Minitest::Test
  include SigintEarlyTests

  def codec
    "msgpack"
  end
end
