# frozen_string_literal: true

require_relative "test_helper"
require "tmpdir"
require "fileutils"

# Outside audit: the Ruby worker driven directly over its pipes, as a
# hostile or unlucky pool would drive it (frames split and coalesced,
# cancels before, with and after their requests, host replies out of order,
# SIGINT at each phase, stdin ending mid-frame, edge ids).
#
# Invariants checked throughout: exactly one reply per request, a handler
# never runs for a request cancelled before it started (handlers log their
# request id to a file), and the worker survives bad input.
class OutsideWireRacesTest < Minitest::Test
  SCRIPT = <<~RUBY
    require "snakepit_bridge"

    worker = SnakepitBridge::Worker.new
    SnakepitBridge::Generic.register(worker)

    mark = lambda do |ctx|
      File.open(ENV.fetch("MARK_FILE"), "a") { |f| f.puts(ctx.request_id) }
    end

    worker.command("mark") do |args, ctx|
      mark.call(ctx)
      sleep args.fetch("sleep", 0)
      { "id" => ctx.request_id }
    end

    worker.command("host") do |args, ctx|
      mark.call(ctx)
      out = Array.new(args.fetch("calls", 1)) { |i| ctx.call_host("f", { "i" => i }) }
      sleep args.fetch("sleep", 0)
      out
    end

    worker.command("stream") do |args, ctx|
      mark.call(ctx)
      args.fetch("n", 1000).times do |i|
        ctx.chunk(i)
        sleep 0.01
      end
      "done"
    end

    worker.run
  RUBY

  CODECS = begin
    require "msgpack"
    %w[json msgpack]
  rescue LoadError
    %w[json]
  end

  def setup
    @dir = Dir.mktmpdir("snakepit-ruby-outside-races-")
    @script = File.join(@dir, "worker.rb")
    File.write(@script, SCRIPT)
    @workers = []
    @n = 0
  end

  def teardown
    @workers.each(&:stop)
    FileUtils.remove_entry(@dir)
  end

  # --- helpers -----------------------------------------------------------------

  def spawn(codec = "json")
    @n += 1
    @codec = codec
    @marks = File.join(@dir, "marks-#{@n}")
    w = WorkerProcess.new(@script, codec: codec, env: { "MARK_FILE" => @marks })
    @workers << w
    assert_equal "hello", w.hello["type"]
    assert w.hello["capabilities"]["pipeline"], w.hello.inspect
    w
  end

  def marked
    File.exist?(@marks) ? File.read(@marks).split.map(&:to_i) : []
  end

  def frame(message)
    SnakepitBridge::Wire.frame(SnakepitBridge::Wire.codec(@codec).encode(message))
  end

  def req(id, command = "mark", args = {})
    frame({ "id" => id, "command" => command, "args" => args, "timestamp" => "2026-11-27T12:24:04.051023Z" })
  end

  def cancel(id)
    frame({ "type" => "cancel", "id" => id })
  end

  def raw(payload)
    [payload.bytesize].pack("N") + payload.b
  end

  def wait_until(timeout = 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    until yield
      return false if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
    true
  end

  def replies(worker, count)
    Array.new(count) { worker.recv }
  end

  def start_slow(worker, id, seconds = 0.6)
    worker.send_raw(req(id, "mark", { "sleep" => seconds }))
    assert wait_until { marked.include?(id) }, worker.stderr
  end

  # The next frame is the reply to a fresh ping: nothing stray came first.
  def assert_nothing_more(worker, id = 999_999)
    worker.request(id, "ping")
    msg = worker.recv
    assert_equal [id, true], [msg["id"], msg["success"]], msg.inspect
  end

  def host_call(worker)
    msg = worker.recv
    assert_equal "host_call", msg["type"], msg.inspect
    msg
  end

  def rest_of_output(worker)
    out = []
    loop do
      out << worker.recv(5)
    rescue RuntimeError
      break
    end
    out
  end

  # --- framing -----------------------------------------------------------------

  # protocol.md section 2: "a 4-byte big-endian unsigned length n, then n
  # bytes of payload. No newline, no other framing."
  def test_a_request_split_at_every_byte_boundary_gets_one_reply_each
    CODECS.each do |codec|
      w = spawn(codec)
      size = req(1, "echo", { "k" => "v" }).bytesize
      (1...size).each do |cut|
        id = cut + 1
        data = req(id, "echo", { "k" => "v" })
        w.send_raw(data.byteslice(0, cut))
        sleep 0.002
        w.send_raw(data.byteslice(cut..))
        msg = w.recv
        assert_equal [id, true], [msg["id"], msg["success"]], msg.inspect
      end
      assert_nothing_more(w)
    end
  end

  # protocol.md section 4: "A cancel for an id that is not running (its reply
  # has been sent) is ignored. So is a cancel whose id is missing or not an
  # integer"; one reply per request, in order.
  def test_hundreds_of_frames_coalesced_in_one_write_with_stray_cancels
    CODECS.each do |codec|
      w = spawn(codec)
      blob = +"".b
      (1..300).each do |id|
        blob << req(id, "echo", { "n" => id }) << cancel(id + 100_000) << frame({ "type" => "cancel", "id" => "x" })
      end
      w.send_raw(blob)
      got = replies(w, 300).map { |m| [m["id"], m["success"]] }
      assert_equal (1..300).map { |i| [i, true] }, got
      assert_nothing_more(w)
    end
  end

  # --- cancels -----------------------------------------------------------------

  # protocol.md section 4: a cancel for an id that is not running is ignored;
  # `pipeline` drops a request only for "a cancel frame for a request it has
  # not started".
  def test_a_cancel_written_ahead_before_its_request_is_ignored_and_the_request_runs
    CODECS.each do |codec|
      w = spawn(codec)
      start_slow(w, 1)
      w.send_raw(cancel(2) + req(2))
      assert_equal [[1, true], [2, true]], replies(w, 2).map { |m| [m["id"], m["success"]] }
      assert_equal [1, 2], marked
      assert_nothing_more(w)
    end
  end

  # protocol.md, hello `pipeline`: "a cancel frame for a request it has not
  # started makes it answer that request Cancelled without running it";
  # a JSON cancel whose type is written with an escape is the same frame.
  def test_a_cancel_written_with_its_request_ahead_answers_it_unrun
    CODECS.each do |codec|
      w = spawn(codec)
      start_slow(w, 1)
      w.send_raw(req(2) + cancel(2))
      w.send_raw(req(3))
      c3 = cancel(3)
      w.send_raw(c3.byteslice(0, 3))
      w.send_raw(c3.byteslice(3..) + req(4) + req(5))
      w.send_raw(codec == "json" ? raw('{"type":"\u0063ancel","id":5}') : cancel(5))
      by_id = replies(w, 5).to_h { |m| [m["id"], m] }
      assert_equal [1, 2, 3, 4, 5], by_id.keys.sort
      [2, 3, 5].each { |id| assert_equal "Cancelled", by_id[id]["error"]["type"], by_id.inspect }
      assert by_id[4]["success"], by_id.inspect
      assert_equal [1, 4], marked
      assert_nothing_more(w)
    end
  end

  # protocol.md section 4: a request whose id is not "an integer > 0" gets
  # "a failed reply of type InvalidRequest ... under id 0". One written
  # ahead with the id 2.0, followed by a cancel for 2, is taken out by that
  # cancel instead (Worker#cancel_waiting compares ids with ==, and
  # 2.0 == 2 in Ruby; #host_frame uses eql? for this reason) and answered
  # Cancelled under id 2, an id no request had.
  def test_a_request_with_a_float_id_written_ahead_is_invalid_whatever_cancel_follows
    w = spawn
    start_slow(w, 1, 0.4)
    w.send_raw(raw('{"id":2.0,"command":"mark","args":{}}') + cancel(2))
    got = replies(w, 2).map { |m| [m["id"], m.dig("error", "type")] }
    assert_equal [[1, nil], [0, "InvalidRequest"]], got
  end

  # protocol.md section 4: "A cancel for an id that is not running (its reply
  # has been sent) is ignored. So is a cancel whose id is missing or not an
  # integer".
  def test_a_cancel_after_the_reply_and_for_edge_ids_is_ignored
    CODECS.each do |codec|
      w = spawn(codec)
      assert w.call(1, "mark")["success"]
      [1, 0, -1, 2**53, 2**64 - 1, 1.5, nil, [1]].each do |id|
        w.send_message(id.nil? ? { "type" => "cancel" } : { "type" => "cancel", "id" => id })
      end
      assert_nothing_more(w)
      assert_equal [1], marked
    end
  end

  # protocol.md section 4: a one-at-a-time worker "cannot tell a request sent
  # too early under that id from one sent after the reply: it runs it as a
  # new request, with a reply of its own".
  def test_duplicate_ids_written_ahead_each_get_their_own_reply
    w = spawn
    start_slow(w, 5)
    w.send_raw(req(5) + req(5))
    assert_equal [[5, true]] * 3, replies(w, 3).map { |m| [m["id"], m["success"]] }
    assert_equal [5, 5, 5], marked
    assert w.call(5, "mark")["success"]
    assert_nothing_more(w)
  end

  # --- host calls ----------------------------------------------------------------

  # protocol.md section 4: "A host_reply whose id is not that of the host
  # call being waited for is ignored: a host call never made, one already
  # answered, or an id that is not an integer".
  def test_host_replies_unknown_duplicated_and_out_of_order_are_ignored
    CODECS.each do |codec|
      w = spawn(codec)
      w.request(1, "host", { "calls" => 2 })
      hc1 = host_call(w)
      junk = [hc1["id"] + 1, 0, 2**64 - 1, "1"].map do |id|
        frame({ "type" => "host_reply", "id" => id, "success" => true, "result" => "junk" })
      end
      w.send_raw(junk.join)
      w.send_message({ "type" => "host_reply", "id" => hc1["id"], "success" => true, "result" => "a" })
      hc2 = host_call(w)
      refute_equal hc1["id"], hc2["id"]
      w.send_message({ "type" => "host_reply", "id" => hc1["id"], "success" => true, "result" => "dup" })
      w.send_message({ "type" => "host_reply", "id" => hc2["id"], "success" => true, "result" => "b" })
      msg = w.recv
      assert_equal [1, %w[a b]], [msg["id"], msg["result"]], msg.inspect
      w.send_message({ "type" => "host_reply", "id" => hc2["id"], "success" => true, "result" => "late" })
      assert_nothing_more(w)
    end
  end

  # hello `pipeline`: a request written ahead whose cancel comes is answered
  # Cancelled unrun, also when both are read while a handler waits for a
  # host reply.
  def test_requests_and_their_cancels_read_during_a_host_call
    w = spawn
    w.request(1, "host")
    hc = host_call(w)
    w.send_raw(req(2) + req(3) + cancel(2))
    sleep 0.2
    w.send_message({ "type" => "host_reply", "id" => hc["id"], "success" => true, "result" => 7 })
    got = replies(w, 3).map { |m| [m["id"], m["success"]] }.sort
    assert_equal [[1, true], [2, false], [3, true]], got
    assert_equal [1, 3], marked
    assert_nothing_more(w)
  end

  # protocol.md hello `pipeline`: "a cancel frame for a request it has not
  # started makes it answer that request Cancelled without running it".
  # Request 2 is read (queued) while request 1 waits for its host reply; the
  # host reply and 2's cancel then come in one write.
  def test_a_cancel_read_with_the_host_reply_drops_its_queued_request
    w = spawn
    w.request(1, "host")
    hc = host_call(w)
    w.send_raw(req(2))
    sleep 0.3
    w.send_raw(frame({ "type" => "host_reply", "id" => hc["id"], "success" => true, "result" => 1 }) + cancel(2))
    assert_equal [[1, true], [2, false]], replies(w, 2).map { |m| [m["id"], m["success"]] }
    assert_equal [1], marked
    assert_nothing_more(w)
  end

  # protocol.md hello `pipeline`: "a request written while another runs
  # waits in its stdin, and a cancel frame for a request it has not started
  # makes it answer that request Cancelled without running it". Request 2
  # comes in one write with request 1's host reply; 1 then goes on for
  # 0.6 s, during which 2's cancel is written. 2 sits in the frame reader's
  # buffer, not in @pending, so #next_to_run takes it with #next_message and,
  # nothing being left over, starts it without #read_waiting.
  def test_a_request_read_with_the_host_reply_is_dropped_by_a_cancel_written_before_it_starts
    w = spawn
    w.request(1, "host", { "sleep" => 0.6 })
    hc = host_call(w)
    w.send_raw(frame({ "type" => "host_reply", "id" => hc["id"], "success" => true, "result" => 1 }) + req(2))
    sleep 0.2
    w.send_raw(cancel(2))
    assert_equal [[1, true], [2, false]], replies(w, 2).map { |m| [m["id"], m["success"]] }
    assert_equal [1], marked
  end

  # protocol.md hello `sigint`: "SIGINT during a handler cancels it (reply
  # Cancelled)"; a host_reply for a call no longer waited for is ignored.
  def test_sigint_during_a_host_call_then_its_late_reply
    CODECS.each do |codec|
      w = spawn(codec)
      w.request(1, "host")
      hc = host_call(w)
      sleep 0.1
      w.signal("INT")
      msg = w.recv
      assert_equal [1, "Cancelled"], [msg["id"], msg.dig("error", "type")], msg.inspect
      w.send_message({ "type" => "host_reply", "id" => hc["id"], "success" => true, "result" => 1 })
      assert w.call(2, "mark")["success"]
      assert_equal [1, 2], marked
      assert_nothing_more(w)
    end
  end

  # protocol.md section 6: "The pool closes the worker's stdin: the worker
  # finishes what it is doing and exits 0 on EOF"; section 4: a stream that
  # ends inside a frame is the end of stdin.
  def test_stdin_closing_inside_a_frame_during_a_host_call_answers_once_and_exits_0
    w = spawn
    w.request(1, "host")
    host_call(w)
    w.send_raw("\x00\x00\x00\x40{\"type\":\"host_re".b)
    w.close_stdin
    status = w.wait(10)
    refute_nil status, w.stderr
    assert_equal 0, status.exitstatus, w.stderr
    out = rest_of_output(w)
    assert_equal [[1, false]], out.map { |m| [m["id"], m["success"]] }, out.inspect
  end

  # --- SIGINT at each phase ---------------------------------------------------------

  # protocol.md hello `sigint`: "SIGINT between handlers is ignored". A
  # request half read when the signal comes, and no cancel for it, runs.
  def test_sigint_while_idle_and_mid_frame_is_ignored
    w = spawn
    5.times do
      w.signal("INT")
      sleep 0.1
    end
    data = req(1)
    w.send_raw(data.byteslice(0, 7))
    sleep 0.1
    w.signal("INT")
    sleep 0.2
    w.send_raw(data.byteslice(7..))
    msg = w.recv
    assert_equal [1, true], [msg["id"], msg["success"]], msg.inspect
    assert_equal [1], marked
    assert_nothing_more(w)
  end

  # protocol.md section 5, chunk: "A chunk sent after the request's final
  # response is a protocol violation"; hello `sigint`.
  def test_sigint_during_a_stream_ends_it_with_one_reply_and_no_chunk_after
    CODECS.each do |codec|
      w = spawn(codec)
      w.request(1, "stream", { "n" => 1000 }, stream: true)
      5.times { assert_equal "chunk", w.recv["type"] }
      w.signal("INT")
      msg = nil
      loop do
        msg = w.recv
        break unless msg["type"] == "chunk"
      end
      assert_equal [1, "Cancelled"], [msg["id"], msg.dig("error", "type")], msg.inspect
      assert_nothing_more(w)
    end
  end

  # Exactly one final response per request whatever SIGINTs land; with no
  # cancel frame sent, none is answered "before it started" (hello `sigint`:
  # "SIGINT between handlers is ignored"; `pipeline`: only a cancel frame
  # answers a request unrun), and none runs twice.
  def test_a_storm_of_sigints_across_many_calls_keeps_one_reply_each
    w = spawn
    w.send_raw((1..100).map { |id| req(id, "mark", { "sleep" => 0.005 }) }.join)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 2.5
    while Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline && marked.size < 100
      w.signal("INT")
      sleep 0.003
    end
    msgs = replies(w, 100)
    assert_equal (1..100).to_a, msgs.map { |m| m["id"] }
    ran = marked
    msgs.each do |m|
      if m["success"]
        assert_includes ran, m["id"], m.inspect
      else
        # A SIGINT may land after the handler started, before its first line.
        assert_equal "Cancelled", m.dig("error", "type"), m.inspect
        refute_includes m.dig("error", "message"), "before it started", m.inspect
      end
    end
    assert_equal ran.uniq.sort, ran
    assert_nothing_more(w)
  end

  # --- end of input, signals -------------------------------------------------------

  # protocol.md section 4: "The stream ends inside a frame ...: the worker
  # treats it as the end of stdin ... and exits 0; it sends nothing".
  def test_stdin_ending_inside_a_frame_while_a_call_runs
    [2, 9].each do |cut|
      w = spawn
      start_slow(w, 1, 0.4)
      w.send_raw(req(2) + req(3).byteslice(0, cut))
      w.close_stdin
      status = w.wait(10)
      refute_nil status, w.stderr
      assert_equal 0, status.exitstatus, w.stderr
      out = rest_of_output(w)
      assert_equal [[1, true], [2, true]], out.map { |m| [m["id"], m["success"]] }
      assert_equal [1, 2], marked
    end
  end

  # bridges.md: "`worker.run` returns at EOF; SIGTERM exits with 0".
  def test_sigterm_at_each_phase_exits_0
    ["idle", "handler", "host call", "mid-frame"].each do |phase|
      w = spawn
      case phase
      when "handler" then start_slow(w, 1, 5)
      when "host call"
        w.request(1, "host")
        host_call(w)
      when "mid-frame"
        w.send_raw(req(1).byteslice(0, 6))
        sleep 0.1
      end
      w.signal("TERM")
      status = w.wait(10)
      refute_nil status, w.stderr
      assert_equal 0, status.exitstatus, "#{phase}: #{w.stderr}"
    end
  end

  # --- hostile payloads ----------------------------------------------------------

  # protocol.md section 4: a length of 0, invalid UTF-8, a payload that does
  # not decode or is not a map: "Reply a failed response with id 0 and error
  # type ProtocolError" and keep serving; an id 0 is InvalidRequest, id 0.
  def test_bad_frames_are_answered_with_id_0_and_the_worker_serves_on
    @codec = "json"
    w = spawn
    deep = "{\"id\":1,\"command\":\"echo\",\"args\":#{'[' * 100_000}#{']' * 100_000}}"
    bad = ["", "{\"id\":1,\"command\":\"echo\",\"args\":{\"s\":\"\xff\xfe\"}}".b, "[1,2]",
           '{"id":1,"command":"echo","args":{}', deep]
    w.send_raw(bad.map { |p| raw(p) }.join)
    bad.each do |p|
      m = w.recv
      assert_equal [0, false, "ProtocolError"], [m["id"], m["success"], m.dig("error", "type")], "#{p[0, 40]} #{m}"
    end
    w.send_raw(req(0, "echo"))
    m = w.recv
    assert_equal [0, "InvalidRequest"], [m["id"], m.dig("error", "type")], m.inspect
    assert_nothing_more(w)
  end

  # protocol.md section 4: "a length above the worker's limit (64 MiB, the
  # pool's default max_frame_size)" is unusable, so one of exactly 64 MiB is
  # a frame; one byte more is a ProtocolError whose payload is read and
  # discarded "so that the next frame is read from the right place", also
  # when it arrives while a call runs, followed by a request and its cancel.
  def test_a_frame_of_exactly_64_mib_is_read_and_one_byte_more_is_skipped_in_step
    limit = 64 * 1024 * 1024
    w = spawn
    head = '{"id":1,"command":"no_such_command","args":{"pad":"'
    tail = '"}}'
    payload = head + ("x" * (limit - head.bytesize - tail.bytesize)) + tail
    assert_equal limit, payload.bytesize
    writer = Thread.new { w.send_raw(raw(payload)) }
    m = w.recv(60)
    writer.join
    assert_equal [1, "UnknownCommand"], [m["id"], m.dig("error", "type")], m.inspect[0, 300]
    start_slow(w, 2, 0.3)
    writer = Thread.new do
      w.send_raw([limit + 1].pack("N") + ("{" * 4096))
      w.send_raw("{" * (limit + 1 - 4096))
      w.send_raw(req(3) + cancel(3) + req(4))
    end
    got = Array.new(4) { w.recv(60) }.map { |r| [r["id"], r["success"], r.dig("error", "type")] }
    writer.join
    assert_equal [[2, true, nil], [0, false, "ProtocolError"], [3, false, "Cancelled"], [4, true, nil]], got
    assert_equal [2, 4], marked
    assert_nothing_more(w)
  end

  # protocol.md section 3: "Integers go through whole from -2^63 to 2^64 - 1";
  # section 4: the request's id is echoed in the reply.
  def test_edge_ids_are_answered_under_themselves
    CODECS.each do |codec|
      w = spawn(codec)
      [1, 2**53, 2**53 + 1, 2**63, 2**64 - 1].each do |id|
        m = w.call(id, "echo", { "x" => id })
        assert_equal [id, true, id], [m["id"], m["success"], m.dig("result", "echoed", "x")], m.inspect
      end
      assert_nothing_more(w)
    end
  end
end
