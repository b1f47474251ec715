# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# Outside review, round 7: host_replies no host call waits for (a hostile
# or broken host can send them without end), a host call cancelled just as
# it takes one of the 256 places, children a handler forks without a
# block, and the ways a handler can leave the process. Real worker
# processes in both codecs; time bounds only turn hangs into failures.
class OutsideRound7Test < Minitest::Test
  include ScriptWorkers

  MSGPACK = begin
    require "msgpack"
    true
  rescue LoadError
    false
  end
  CODECS = (MSGPACK ? %w[json msgpack] : %w[json]).freeze
  WAIT = 30 # seconds; generous on a loaded 2-core machine
  CAP = SnakepitBridge::Worker::MAX_HOST_CALLS_IN_FLIGHT

  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"

    worker = SnakepitBridge::Worker.new

    worker.command("ask") { |args, ctx| ctx.call_host("echo", args) }

    # A host call cancelled (by the pool's SIGINT) just as it has taken its
    # place among the 256, before it is written.
    worker.command("cancel_at_admission") do |_args, ctx|
      fired = false
      trace = TracePoint.new(:return) do |tp|
        next if fired || tp.method_id != :admit_held || !Thread.current.equal?(Thread.main)

        fired = true
        Process.kill("INT", Process.pid)
        sleep 0.001 until ctx.cancelled?
      end
      trace.enable { ctx.call_host("never_sent", {}) }
      "not cancelled"
    end

    # The number of places among the 256 the bridge counts as taken.
    worker.command("places_taken") do |_args, _ctx|
      worker.instance_variable_get(:@host_lock).synchronize { worker.instance_variable_get(:@host_in_flight).size }
    end

    # fork without a block: the child goes on with the handler's code.
    worker.command("fork_without_block") do |args, ctx|
      pid = fork
      if pid
        Process.wait(pid)
        { "child_status" => $?.exitstatus, "child_pid" => pid }
      else
        case args.fetch("child")
        when "chunk" then ctx.chunk("from the child")
        when "host_call" then ctx.call_host("echo", { "from" => "the child" })
        end
        "the child's result"
      end
    end

    # What Timeout.timeout does: another thread raises into the handler's.
    class Deadline < StandardError; end

    # Raises Deadline into +target+ once it is blocked (writing a frame the
    # pool does not read yet), and says so on stderr.
    raise_when_blocked = lambda do |target|
      Thread.new do
        sleep 0.001 until target.status == "sleep"
        target.raise(Deadline, "deadline")
        $stderr.puts "raised into the handler"
      end
    end

    worker.command("raise_while_chunking") do |args, ctx|
      raise_when_blocked.call(Thread.current)
      ctx.chunk("c" * args.fetch("bytes"))
      "not raised"
    end

    worker.command("raise_while_calling_host") do |args, ctx|
      raise_when_blocked.call(Thread.current)
      ctx.call_host("store", { "blob" => "h" * args.fetch("bytes") })
      "not raised"
    end

    # A deadline that lands (as Timeout.timeout's may) just as a frame
    # the pool wrote ahead has been read and decoded during a host call.
    worker.command("raise_as_a_frame_is_read") do |_args, ctx|
      fired = false
      trace = TracePoint.new(:return) do |tp|
        next if fired || tp.method_id != :next_message || !Thread.current.equal?(Thread.main)

        fired = true
        Thread.current.raise(Deadline, "deadline")
      end
      begin
        trace.enable { ctx.call_host("slow", {}) }
      rescue Deadline
        "deadline"
      end
    end

    worker.command("thread_exit") { |_args, _ctx| Thread.exit }

    # exit while a thread of the handler reads stdin for its host call.
    worker.command("exit_while_a_thread_waits") do |args, ctx|
      Thread.new do
        ctx.call_host("slow", {})
      rescue SnakepitBridge::Cancelled, SnakepitBridge::HostCallError
        nil
      end
      sleep 0.001 until worker.instance_variable_get(:@stdin_holder).is_a?(Thread)
      exit args.fetch("status")
    end

    worker.command("leave_a_ractor_running") do |_args, _ctx|
      Warning[:experimental] = false
      Ractor.new { loop { sleep 0.05 } }
      "left"
    end
    worker.command("abort") { |_args, _ctx| abort("abort from a handler") }

    # Text a Ractor writes to $stdout: the Ractor's own $stdout is the
    # process's fd 1, which the bridge pointed at stderr.
    worker.command("ractor_prints") do |_args, _ctx|
      Warning[:experimental] = false
      Ractor.new { $stdout.puts "ractor-line"; $stdout.flush; 7 }.take
    end

    worker.run
  RUBY

  def host_reply(id, result = nil)
    { "type" => "host_reply", "id" => id, "success" => true, "result" => result }
  end

  # The lines of +worker+'s stderr about host_replies it dropped.
  def dropped_lines(worker)
    worker.stderr.lines.select { |line| line.include?("matches no waiting host call") || line.include?("host_replies matching") }
  end

  # Ends +worker+ by closing its stdin, and returns its whole stderr.
  def finish(worker)
    worker.close_stdin
    status = worker.wait(WAIT)
    refute_nil status, "the worker did not exit at the end of stdin"
    assert_equal 0, status.exitstatus, worker.stderr
  end

  # 1000 host_replies for no host call: ids of every kind, a 1 MB string
  # among them.
  def stray_replies(worker, first_id)
    ids = (first_id...(first_id + 997)).to_a + [3.0, "s" * 1_000_000, nil]
    ids.each { |id| worker.send_message(host_reply(id)) }
  end

  def assert_dropped_lines_counted(worker, first_shown)
    lines = dropped_lines(worker)
    assert_equal 4, lines.size, "one line at the 1st, 10th, 100th and 1000th, not one each:\n#{lines.first(12).join}"
    assert_includes lines[0], "host_reply #{first_shown} matches no waiting host call"
    %w[10 100 1000].each_with_index do |count, i|
      assert_match(/\b#{count} host_replies matching no waiting host call dropped so far/, lines[i + 1])
    end
    lines.each { |line| assert_operator line.bytesize, :<, 1000, "a line quotes the id briefly" }
  end

  # Known, left by round 6: the bridge logged a line for every late
  # host_reply. README, The context: a host call "counts from when it is
  # sent until its answer is read, even one whose wait was given up" -- the
  # replies to such calls, and replies the host sends for nothing, are
  # dropped, and a flood of them must not flood the log.
  def test_host_replies_for_no_host_call_between_calls_are_logged_with_a_count_not_each
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      stray_replies(worker, 1)
      reply = worker.call(1, "ping")
      assert_equal true, reply["success"], "#{codec}: #{reply.inspect}"
      finish(worker)
      assert_dropped_lines_counted(worker, "1")
    end
  end

  def test_host_replies_for_no_host_call_read_while_one_waits_are_logged_with_a_count
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      worker.request(1, "ask", { "n" => 1 })
      call = worker.recv(WAIT)
      assert_equal "host_call", call["type"], "#{codec}: #{call.inspect}"
      stray_replies(worker, call["id"] + 1000)
      worker.send_message(host_reply(call["id"], { "echoed" => true }))
      reply = worker.recv(WAIT)
      assert_equal [1, true, { "echoed" => true }], [reply["id"], reply["success"], reply["result"]], "#{codec}: #{reply.inspect}"
      finish(worker)
      assert_dropped_lines_counted(worker, (call["id"] + 1000).to_s)
    end
  end

  # A real late reply, to a host call whose call was cancelled: logged as
  # the first, and its place is free again.
  def test_the_late_reply_of_a_cancelled_calls_host_call_is_logged_once_and_frees_its_place
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      worker.request(1, "ask", { "n" => 1 })
      call = worker.recv(WAIT)
      assert_equal "host_call", call["type"], "#{codec}: #{call.inspect}"
      worker.send_message({ "type" => "cancel", "id" => 1 })
      reply = worker.recv(WAIT)
      assert_equal [1, "Cancelled"], [reply["id"], reply.dig("error", "type")], "#{codec}: #{reply.inspect}"
      worker.send_message(host_reply(call["id"], "late"))
      assert_equal 0, worker.call(2, "places_taken")["result"], "#{codec}: the late reply frees its place"
      finish(worker)
      lines = dropped_lines(worker)
      assert_equal 1, lines.size, "#{codec}: #{lines.inspect}"
      assert_includes lines[0], "host_reply #{call['id']} matches no waiting host call"
    end
  end

  # README, Concurrency and cancellation: SIGINT raises Cancelled "wherever
  # it is", and "A held host call ... fails as a sent one would if its call
  # is cancelled ...; it is then never sent". A SIGINT that landed just
  # after a host call took its place, before it was written, kept the place
  # for good: no reply would ever free it. After 256 such, every host call
  # of the worker waited in the bridge for ever.
  def test_a_host_call_cancelled_as_it_takes_its_place_gives_the_place_back
    worker = spawn_worker
    (1..CAP).each do |id|
      reply = worker.call(id, "cancel_at_admission")
      assert_equal "Cancelled", reply.dig("error", "type"), reply.inspect
      next unless id == 1

      assert_equal 0, worker.call(CAP + 1, "places_taken")["result"], "the cancelled host call gave its place back"
    end
    worker.request(CAP + 2, "ask", { "after" => "cancellations" })
    call = worker.recv(WAIT)
    assert_equal ["host_call", "echo"], [call["type"], call["function"]],
                 "a host call after #{CAP} such cancellations is sent: #{call.inspect}"
    worker.send_message(host_reply(call["id"], "answered"))
    reply = worker.recv(WAIT)
    assert_equal [CAP + 2, "answered"], [reply["id"], reply["result"]], reply.inspect
    refute_includes worker.stderr, "never_sent"
    finish(worker)
  end

  # README, Standard output: "nothing can read frames meant for the
  # worker". A child a handler forks without a block goes on with the
  # handler's code; when it returns into the bridge, sends a chunk or calls
  # the host, it used to write to the pool's frames (a second reply to the
  # call, or a host call from a process that then read the worker's
  # stdin). It now leaves there with status 1 and writes nothing.
  def test_a_child_forked_without_a_block_never_writes_or_reads_the_frames
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      %w[return chunk host_call].each_with_index do |child, i|
        id = i + 1
        worker.request(id, "fork_without_block", { "child" => child }, stream: true)
        reply = worker.recv(WAIT)
        assert_nil reply["type"], "#{codec}/#{child}: only the parent speaks: #{reply.inspect}"
        assert_equal id, reply["id"], "#{codec}/#{child}: #{reply.inspect}"
        assert_kind_of Hash, reply["result"], "#{codec}/#{child}: the parent's reply, not the child's: #{reply.inspect}"
        assert_equal 1, reply["result"]["child_status"], "#{codec}/#{child}: #{reply.inspect}"
        child_pid = reply.dig("result", "child_pid")
        line = "process #{child_pid}, forked by a handler of worker #{worker.pid}, reached the pool's frames"
        assert_includes worker.stderr_until(line, timeout: WAIT), line, "#{codec}/#{child}"
      end
      assert_equal "", worker.drain_stdout(0.3), "#{codec}: nothing else was written"
      reply = worker.call(9, "ping")
      assert_equal [9, true], [reply["id"], reply["success"]], "#{codec}: the worker serves on: #{reply.inspect}"
      finish(worker)
    end
  end

  # How many times +text+ is in +worker+'s stderr, once it is +times+
  # (or the wait is over).
  def seen_times(worker, text, times)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + WAIT
    loop do
      seen = worker.stderr.scan(text).size
      return seen if seen >= times || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
  end

  # Reads the next frame whole, even one of several MB.
  def next_frame(worker)
    worker.recv(WAIT)
  end

  # README, The context: "`chunk` and `call_host` are also safe from other
  # threads", and a chunk or host call is a frame. Timeout.timeout raises
  # into the handler's thread from another one, wherever it is: one that
  # landed while a large chunk or host call was being written (the pool
  # reading slowly) cut the frame in half, and the pool read the rest of
  # the stream as garbage. The exception now lands once the frame is
  # written, and becomes the call's failed reply.
  def test_an_exception_raised_into_the_handler_never_cuts_a_frame_it_writes
    bytes = 4 * 1024 * 1024
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      worker.request(1, "raise_while_chunking", { "bytes" => bytes })
      assert_includes worker.stderr_until("raised into the handler", timeout: WAIT), "raised into the handler", codec
      chunk = next_frame(worker)
      assert_equal ["chunk", 1, bytes], [chunk["type"], chunk["id"], chunk["data"].bytesize], codec
      reply = next_frame(worker)
      assert_equal [1, false, "Deadline"], [reply["id"], reply["success"], reply.dig("error", "type")], "#{codec}: #{reply.inspect[0, 300]}"

      worker.request(2, "raise_while_calling_host", { "bytes" => bytes })
      assert_equal 2, seen_times(worker, "raised into the handler", 2), codec
      call = next_frame(worker)
      assert_equal ["host_call", 2, bytes], [call["type"], call["request_id"], call.dig("args", "blob").bytesize], codec
      reply = next_frame(worker)
      assert_equal [2, "Deadline"], [reply["id"], reply.dig("error", "type")], "#{codec}: #{reply.inspect[0, 300]}"
      worker.send_message(host_reply(call["id"])) # late: frees its place
      assert_equal 0, worker.call(3, "places_taken")["result"], codec
      finish(worker)
    end
  end

  # A request the pool wrote ahead, read while the handler waited for a
  # host call, was lost (never answered) when the handler's deadline
  # landed between its decoding and its queueing.
  def test_an_exception_raised_into_the_handler_as_a_frame_is_read_loses_no_request
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      worker.request(1, "raise_as_a_frame_is_read")
      call = next_frame(worker)
      assert_equal "host_call", call["type"], "#{codec}: #{call.inspect}"
      worker.request(2, "ping") # written ahead, read during the host call
      reply = next_frame(worker)
      assert_equal [1, "deadline"], [reply["id"], reply["result"]], "#{codec}: #{reply.inspect}"
      reply = next_frame(worker)
      assert_equal [2, true], [reply["id"], reply["success"]], "#{codec}: the request read ahead is answered: #{reply.inspect}"
      worker.send_message(host_reply(call["id"]))
      finish(worker)
    end
  end

  # README, Errors: "Only leaving the process ends the worker". The
  # handler runs on the thread that called worker.run, the main thread:
  # Thread.exit there leaves the process (status 0, no reply), and abort
  # is exit(1) with its message on stderr.
  def test_thread_exit_and_abort_in_a_handler_end_the_worker_without_a_reply
    { "thread_exit" => [0, nil], "abort" => [1, "abort from a handler"] }.each do |command, (status, text)|
      worker = spawn_worker
      worker.request(1, command)
      ended = worker.wait(WAIT)
      refute_nil ended, "#{command}: the worker did not end"
      assert_equal status, ended.exitstatus, "#{command}: #{worker.stderr}"
      assert_equal "", worker.drain_stdout(0.1), "#{command}: no reply"
      assert_includes worker.stderr, text if text
    end
  end

  # README, Errors: exit "end[s] it with [its] status", also while a thread
  # the handler started holds stdin waiting for a host call's answer.
  def test_exit_while_a_thread_of_the_handler_reads_stdin_keeps_its_status
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      worker.request(1, "exit_while_a_thread_waits", { "status" => 5 })
      call = next_frame(worker)
      assert_equal "host_call", call["type"], "#{codec}: #{call.inspect}"
      ended = worker.wait(WAIT)
      refute_nil ended, "#{codec}: the worker did not end"
      assert_equal 5, ended.exitstatus, "#{codec}: #{worker.stderr}"
      assert_equal "", worker.drain_stdout(0.1), "#{codec}: nothing after the host call"
    end
  end

  # README: "worker.run ... serves until the pool closes stdin, then
  # returns"; a Ractor a handler left running does not keep it alive.
  def test_a_ractor_left_running_does_not_keep_the_worker_from_exiting
    worker = spawn_worker
    assert_equal "left", worker.call(1, "leave_a_ractor_running")["result"]
    finish(worker)
  end

  # README, Standard output: C extensions and child processes write to the
  # log, not the frames; a Ractor's $stdout does too.
  def test_a_ractor_printing_to_stdout_writes_to_the_log_not_the_frames
    CODECS.each do |codec|
      worker = spawn_worker(codec: codec)
      reply = worker.call(1, "ractor_prints")
      assert_equal [true, 7], [reply["success"], reply["result"]], "#{codec}: #{reply.inspect}"
      assert_includes worker.stderr_until("ractor-line", timeout: WAIT), "ractor-line", codec
      assert_equal true, worker.call(2, "ping")["success"], codec
      finish(worker)
    end
  end
end
