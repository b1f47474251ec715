# frozen_string_literal: true

require_relative "test_helper"

# ctx.call_host from a handler's threads, driven as a hostile pool would:
# many threads at once, a thread calling just as its handler returns (many
# times over, with the next calls written ahead), a host call left waiting,
# a thread of an ended call calling during the next call, a cancel frame or
# SIGINT while a thread reads stdin, stdin closing under a thread, and
# host_reply frames for no host call. Every call gets its own reply, no
# host call leaves for an ended call, and the worker serves on.
class HostThreadsHostileTest < Minitest::Test
  WORKER = File.join(__dir__, "hostile_threads_worker.rb")

  def codecs
    require "msgpack"
    %w[json msgpack]
  rescue LoadError
    %w[json]
  end

  def setup
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
  end

  def start(codec)
    w = WorkerProcess.new(WORKER, codec: codec)
    @workers << w
    @codec = SnakepitBridge::Wire.codec(codec)
    @answered = {}
    @host_calls = []
    w
  end

  def frame(message)
    SnakepitBridge::Wire.frame(@codec.encode(message))
  end

  def req(id, command, args = {})
    { "id" => id, "command" => command, "args" => args, "timestamp" => "2026-11-27T12:24:04.051023Z" }
  end

  def echo(call)
    { "type" => "host_reply", "id" => call["id"], "success" => true, "result" => { "echo" => call["args"] } }
  end

  # The next frame; checks that no host call names a request already
  # answered, and that no request is answered twice.
  def recv(w, timeout = 30)
    msg = w.recv(timeout)
    if msg["type"] == "host_call"
      refute @answered.key?(msg["request_id"]), "host call #{msg.inspect} after its request's reply; #{w.stderr}"
      @host_calls << msg
    elsif msg["type"].nil?
      refute @answered.key?(msg["id"]), "two replies for #{msg['id']}"
      @answered[msg["id"]] = true
    end
    msg
  end

  # Reads until every request in +ids+ is answered, answering host calls
  # as they come (unless +hold+); {id => reply}.
  def replies(w, ids, hold: false)
    got = {}
    until (ids - got.keys).empty?
      msg = recv(w)
      if msg["type"] == "host_call"
        w.send_message(echo(msg)) unless hold
      elsif msg["type"].nil?
        assert_includes ids, msg["id"], "unexpected reply #{msg.inspect}"
        got[msg["id"]] = msg
      end
    end
    got
  end

  def call(w, id, command, args = {})
    w.send_message(req(id, command, args))
    replies(w, [id])[id]
  end

  def host_call(w)
    msg = recv(w)
    assert_equal "host_call", msg["type"], "#{msg.inspect}; #{w.stderr}"
    msg
  end

  def report(w, id)
    reply = call(w, id, "report")
    assert_equal true, reply["success"], "#{reply.inspect}; #{w.stderr}"
    assert_equal 0, reply["result"]["alive"], "a thread's host call never ended"
    reply["result"]["outcomes"]
  end

  def assert_finished(outcome, id)
    assert_equal "Cancelled", outcome["type"], outcome.inspect
    assert_includes outcome["message"], "request #{id} is already finished"
  end

  def test_a_swarm_of_threads_gets_each_its_own_reply_in_any_order
    rng = Random.new(7)
    n = 16
    k = 6
    codecs.each do |codec|
      w = start(codec)
      [1, 2].each do |id|
        w.send_message(req(id, "swarm", { "n" => n, "k" => k }))
        reply = nil
        waiting = []
        while reply.nil?
          msg = begin
            recv(w, waiting.empty? ? 30 : 0.3)
          rescue RuntimeError => e
            raise unless e.message.start_with?("no frame")

            nil
          end
          if msg && msg["type"] == "host_call"
            assert_equal id, msg["request_id"]
            waiting << msg
            next if waiting.size < n + 1
          elsif msg
            reply = msg
            next
          end
          # Every caller waits (or the stream paused): all answered,
          # shuffled, in one write.
          w.send_raw(waiting.shuffle(random: rng).map { |c| frame(echo(c)) }.join)
          waiting = []
        end
        assert_equal true, reply["success"], "#{reply.inspect}; #{w.stderr}"
        want = Array.new(n + 1) { |i| Array.new(k) { |j| { "result" => { "echo" => { "i" => i, "j" => j, "rid" => id } } } } }
        assert_equal want, reply["result"]
      end
      assert_equal 2 * (n + 1) * k, @host_calls.size
      assert_equal @host_calls.size, @host_calls.map { |c| c["id"] }.uniq.size
      refute_match(/Error|Traceback/, w.stderr)
    end
  end

  # +count+ race_return calls from id +first+, +batch+ written at a time;
  # every host call answered at once. The id after the last.
  def race(w, first, count, batch)
    first.step(first + count - 1, batch) do |from|
      ids = (from...[from + batch, first + count].min).to_a
      w.send_raw(ids.map { |i| frame(req(i, "race_return", { "tag" => i.to_s })) }.join)
      got = replies(w, ids)
      ids.each { |i| assert_equal i.to_s, got[i]["result"], "#{got[i].inspect}; #{w.stderr}" }
    end
    first + count
  end

  def test_a_thread_calling_as_its_handler_returns_never_leaks
    codecs.each do |codec|
      w = start(codec)
      nxt = race(w, 1, 1500, 50)
      nxt = race(w, nxt, 500, 1)
      outcomes = report(w, nxt)
      assert_equal nxt - 1, outcomes.size
      sent = @host_calls.to_h { |c| [c["args"]["tag"], c] }
      (1...nxt).each do |i|
        outcome = outcomes.fetch(i.to_s)
        if outcome.key?("result")
          assert_equal({ "echo" => { "tag" => i.to_s } }, outcome["result"])
          assert_equal i, sent.fetch(i.to_s)["request_id"]
        else
          assert_finished(outcome, i)
        end
      end
      assert_equal true, call(w, nxt + 1, "ping")["success"]
    end
  end

  def test_a_host_call_waiting_when_the_handler_returns_fails_and_frees_stdin
    codecs.each do |codec|
      w = start(codec)
      ids = (1..20).map { |n| 10 * n }
      ids.each do |id|
        w.send_message(req(id, "hold_then_return", { "tag" => id.to_s }))
        held = []
        loop do
          msg = recv(w)
          held << msg if msg["type"] == "host_call"
          break if msg["type"].nil? && msg["id"] == id
        end
        # Its late reply, the next calls and a cancel for one of them, in
        # one write: none may be eaten by the thread.
        frames = held.map { |c| echo(c) } +
                 [req(id + 1, "mark"), req(id + 2, "mark"), { "type" => "cancel", "id" => id + 2 }, req(id + 3, "mark")]
        w.send_raw(frames.map { |f| frame(f) }.join)
        got = replies(w, [id + 1, id + 2, id + 3])
        assert_equal id + 1, got[id + 1]["result"], w.stderr
        assert_equal "Cancelled", got[id + 2]["error"]["type"], w.stderr
        assert_equal id + 3, got[id + 3]["result"], w.stderr
      end
      outcomes = report(w, 999)
      ids.each { |id| assert_finished(outcomes.fetch(id.to_s), id) }
      assert_equal(ids.flat_map { |id| [id + 1, id + 3] }, call(w, 1000, "order")["result"])
    end
  end

  def test_a_thread_of_an_ended_call_is_refused_during_the_next_call
    codecs.each do |codec|
      w = start(codec)
      ids = (1..10).map { |n| 10 * n }
      ids.each do |id|
        tag = "stale#{id}"
        assert_equal tag, call(w, id, "leave_for_next", { "tag" => tag })["result"]
        reply = call(w, id + 1, "open_and_call", { "tag" => tag })
        assert_equal true, reply["success"], "#{reply.inspect}; #{w.stderr}"
        assert_equal({ "here" => { "result" => { "echo" => { "here" => id + 1 } } },
                       "thread" => { "result" => { "echo" => { "fresh" => id + 1 } } } }, reply["result"])
      end
      outcomes = report(w, 999)
      ids.each { |id| assert_finished(outcomes.fetch("stale#{id}"), id) }
      assert_equal(ids.map { |id| id + 1 }, @host_calls.map { |c| c["request_id"] }.uniq.sort)
    end
  end

  def test_host_replies_for_no_host_call_while_a_thread_reads_are_dropped
    codecs.each do |codec|
      w = start(codec)
      w.send_message(req(1, "ask_and_block", { "tag" => "t1", "how" => "join" }))
      hc = host_call(w)
      bogus = [
        { "type" => "host_reply", "id" => hc["id"] + 1000, "success" => true, "result" => "wrong" },
        { "type" => "host_reply", "id" => 0, "success" => true, "result" => "wrong" },
        { "type" => "host_reply", "id" => -hc["id"], "success" => false, "error" => { "type" => "X", "message" => "wrong" } },
      ]
      w.send_raw(bogus.map { |f| frame(f) }.join)
      w.send_message(echo(hc))
      reply = replies(w, [1])[1]
      assert_equal({ "joined" => { "result" => { "echo" => { "tag" => "t1" } } } }, reply["result"], w.stderr)
      assert_equal true, call(w, 2, "ping")["success"]
    end
  end

  def test_an_unusable_frame_while_a_thread_reads_is_answered_and_skipped
    codecs.each do |codec|
      w = start(codec)
      w.send_message(req(1, "ask_and_block", { "tag" => "t1", "how" => "join" }))
      hc = host_call(w)
      # A payload that decodes to nothing usable, then the reply.
      w.send_raw(SnakepitBridge::Wire.frame("\xc1\xff{".b))
      w.send_message(echo(hc))
      got = []
      got << recv(w) until @answered.key?(1)
      errors = got.select { |m| m["id"].zero? }
      assert_equal 1, errors.size, "#{got.inspect}; #{w.stderr}"
      assert_equal "ProtocolError", errors[0]["error"]["type"]
      assert_equal({ "joined" => { "result" => { "echo" => { "tag" => "t1" } } } }, got.last["result"], w.stderr)
      assert_equal true, call(w, 2, "ping")["success"]
    end
  end

  def test_sigterm_while_a_thread_reads_ends_the_worker_cleanly
    codecs.each do |codec|
      w = start(codec)
      w.send_message(req(1, "ask_and_block", { "tag" => "t1", "how" => "sleep" }))
      host_call(w)
      w.signal("TERM")
      status = w.wait(30)
      refute_nil status, "the worker did not exit on SIGTERM"
      assert_equal 0, status.exitstatus, w.stderr
    end
  end

  def test_stdin_closing_while_a_thread_waits_fails_its_host_call
    codecs.each do |codec|
      w = start(codec)
      w.send_message(req(1, "ask_and_block", { "tag" => "t1", "how" => "join" }))
      host_call(w)
      w.close_stdin
      reply = replies(w, [1])[1]
      joined = reply["result"]["joined"]
      assert_includes joined["message"], "stdin", "#{reply.inspect}; #{w.stderr}"
      status = w.wait(30)
      refute_nil status, "the worker did not exit once stdin closed"
      assert_equal 0, status.exitstatus, w.stderr
    end
  end

  def cancel_while_a_thread_reads(how, by_signal:)
    codecs.each do |codec|
      w = start(codec)
      ids = [10, 20, 30]
      ids.each do |id|
        w.send_message(req(id, "ask_and_block", { "tag" => id.to_s, "how" => how }))
        hc = host_call(w)
        if by_signal
          w.signal("INT")
        else
          w.send_message({ "type" => "cancel", "id" => id })
        end
        reply = replies(w, [id])[id]
        assert_equal "Cancelled", reply.dig("error", "type"), "#{how}: #{reply.inspect}; #{w.stderr}"
        w.signal("INT") unless by_signal # the pool's, after its cancel: too late, ignored
        w.send_message(echo(hc)) # late: dropped
        assert_equal id + 1, call(w, id + 1, "mark")["result"], w.stderr
      end
      outcomes = report(w, 999)
      ids.each do |id|
        outcome = outcomes.fetch(id.to_s)
        assert_equal "Cancelled", outcome["type"], outcome.inspect
        if by_signal
          assert_includes outcome["message"], "request #{id} is already finished"
        else
          assert_includes outcome["message"], "request #{id} was cancelled"
        end
      end
      assert_equal [11, 21, 31], call(w, 1000, "order")["result"]
    end
  end

  def test_a_cancel_frame_read_by_a_thread_interrupts_a_blocked_handler
    %w[join cond sleep].each { |how| cancel_while_a_thread_reads(how, by_signal: false) }
  end

  def test_sigint_while_a_thread_reads_cancels_the_call_and_frees_stdin
    %w[join cond sleep].each { |how| cancel_while_a_thread_reads(how, by_signal: true) }
  end

  # SIGINTs land anywhere: in handlers, while threads read stdin, as
  # handlers return, between calls. Every call still gets exactly one reply
  # (its own result, or Cancelled), no host call follows its call's reply,
  # and the worker serves on.
  def test_a_sigint_storm_while_threads_call_the_host_loses_nothing
    codecs.each do |codec|
      w = start(codec)
      w.during_sigint_storm(every: 0.001) do
        1.step(400, 8) do |base|
          frames = [req(base, "swarm", { "n" => 3, "k" => 2 })]
          frames += (base + 1..base + 3).map { |i| req(i, "race_return", { "tag" => i.to_s }) }
          frames << req(base + 4, "ask_and_block", { "tag" => (base + 4).to_s, "how" => "join" })
          frames += (base + 5..base + 7).map { |i| req(i, "hold_then_return", { "tag" => i.to_s }) }
          w.send_raw(frames.map { |f| frame(f) }.join)
          replies(w, (base..base + 7).to_a).each do |i, reply|
            if reply["success"] != true
              assert_equal "Cancelled", reply["error"]["type"], "#{reply.inspect}; #{w.stderr}"
            elsif i == base
              assert_equal({ "result" => { "echo" => { "i" => 0, "j" => 1, "rid" => base } } }, reply["result"][0][1])
            end
          end
        end
      end
      report(w, 1000)
      assert_equal true, call(w, 1001, "ping")["success"], w.stderr
    end
  end

  def test_calls_written_ahead_while_a_thread_reads_wait_and_run_in_order
    codecs.each do |codec|
      w = start(codec)
      w.send_message(req(1, "ask_and_block", { "tag" => "t1", "how" => "join" }))
      hc = host_call(w)
      frames = [req(2, "mark"), req(3, "mark"), { "type" => "cancel", "id" => 3 },
                req(4, "mark"), req(5, "mark"), echo(hc)]
      w.send_raw(frames.map { |f| frame(f) }.join)
      got = replies(w, [1, 2, 3, 4, 5])
      assert_equal({ "joined" => { "result" => { "echo" => { "tag" => "t1" } } } }, got[1]["result"], w.stderr)
      assert_equal "Cancelled", got[3]["error"]["type"]
      assert_includes got[3]["error"]["message"], "before it started"
      assert_equal [2, 4, 5], call(w, 6, "order")["result"]
    end
  end
end
