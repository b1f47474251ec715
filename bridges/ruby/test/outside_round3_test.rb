# frozen_string_literal: true

require_relative "test_helper"

# Outside review, round 3: test/round3_worker.rb driven over its real pipes
# with hostile values inside well-formed frames (maps, floats, huge integers
# and binary strings where ids and text belong, MessagePack ext values and
# keys that are not strings), handlers that raise what a plain rescue lets
# through or return what no codec can write, and a SIGTERM while the pool
# is not reading. Each test names the promise of docs/protocol.md or the
# README it checks. Time bounds only turn hangs into failures.
class OutsideRound3Test < Minitest::Test
  WORKER = File.join(__dir__, "round3_worker.rb")
  MSGPACK = begin
    require "msgpack"
    true
  rescue LoadError
    false
  end
  CODECS = (MSGPACK ? %w[json msgpack] : %w[json]).freeze

  def needs_msgpack
    skip "needs the msgpack gem" unless MSGPACK
  end

  def setup
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
  end

  def spawn(codec = "json", env: {})
    WorkerProcess.new(WORKER, codec: codec, env: env).tap { |w| @workers << w }
  end

  def ext(type, payload)
    MessagePack::ExtensionValue.new(type, payload.b)
  end

  # Writes +message+ as one MessagePack frame, whatever it holds.
  def send_packed(worker, message)
    worker.send_raw(SnakepitBridge::Wire.frame(MessagePack.pack(message)))
  end

  def assert_failed(reply, id, type)
    assert_equal [id, false, type], [reply["id"], reply["success"], reply.dig("error", "type")], reply.inspect[0, 600]
    reply["error"]
  end

  def assert_ok(reply, id)
    assert_equal [id, true], [reply["id"], reply["success"]], reply.inspect[0, 600]
    reply["result"]
  end

  # The worker still answers, under the id given: it did not die.
  def assert_serving(worker, id)
    assert_equal "ok", assert_ok(worker.call(id, "ping"), id)["status"], worker.stderr[-600..]
  end

  # README, Errors: "Every exception a handler raises is a failed reply of
  # its class, and the worker serves on ... also those a plain `rescue => e`
  # lets through, such as `Exception` itself, an `Interrupt` your code
  # raises". An Interrupt subclass of the handler's own (not the bridge's
  # Cancelled) ended the worker: only Interrupt itself was caught.
  def test_a_handler_raising_its_own_interrupt_subclass_gets_a_failed_reply
    CODECS.each do |codec|
      w = spawn(codec)
      error = assert_failed(w.call(1, "raise", { "kind" => "interrupt_subclass" }), 1, "HandlerStop")
      assert_equal "the handler's own Interrupt", error["message"]
      assert_failed(w.call(2, "raise", { "kind" => "exception" }), 2, "Exception")
      assert_serving(w, 3)
    end
  end

  # README, Errors: "(one whose `message` itself raises is reported with the
  # message `<message unavailable>`)". A #message raising Exception,
  # Interrupt or NoMemoryError (not StandardErrors) ended the worker while
  # its failed reply was being built.
  def test_an_exception_whose_message_raises_anything_is_reported_without_its_message
    w = spawn
    %w[StandardError Exception Interrupt NoMemoryError].each_with_index do |raised, i|
      reply = w.call(i + 1, "raise", { "kind" => "message_raises", "raised" => raised })
      error = assert_failed(reply, i + 1, "MessageRaises")
      assert_equal "<message unavailable>", error["message"], raised
    end
    assert_serving(w, 9)
  end

  # README, Codecs: "A result the codec cannot represent (`Float::NAN` in
  # JSON, an arbitrary object in MessagePack ...) becomes a failed reply
  # instead of a broken frame; its type is the error the codec raised";
  # bridges.md: "Ruby under JSON writes any other object (...) as its `to_s`
  # text". A cyclic value is nested too deep for either codec. A result
  # whose #to_s / #to_json / #to_msgpack raises Exception, Interrupt or
  # NoMemoryError ended the worker: only StandardErrors were caught.
  def test_results_no_codec_can_write_are_failed_replies_and_the_worker_serves_on
    CODECS.each do |codec|
      w = spawn(codec)
      json = codec == "json"
      proc_result = w.call(1, "result", { "kind" => "proc" })
      if json
        assert_match(/\A#<Proc:/, assert_ok(proc_result, 1)["value"])
      else
        assert_failed(proc_result, 1, "NoMethodError")
      end
      assert_equal json, w.call(2, "result", { "kind" => "io" })["success"], codec
      %w[cyclic_array cyclic_hash].each_with_index do |kind, i|
        reply = w.call(3 + i, "result", { "kind" => kind })
        assert_equal false, reply["success"], "#{codec} #{kind}"
        assert_match(/cannot be encoded as #{codec}/, reply.dig("error", "message"))
      end
      nan = w.call(5, "result", { "kind" => "nan" })
      if json
        assert_failed(nan, 5, "JSON::GeneratorError")
      else
        assert assert_ok(nan, 5)["value"].nan?
      end
      %w[StandardError Exception Interrupt NoMemoryError].each_with_index do |raised, i|
        reply = w.call(10 + i, "result", { "kind" => "to_s_raises", "raised" => raised })
        error = assert_failed(reply, 10 + i, raised)
        assert_equal "result cannot be encoded as #{codec}: raised by #to_s", error["message"]
      end
      assert_serving(w, 20)
    end
  end

  # protocol.md section 4: a `command` that is not a string is an
  # InvalidRequest under the request's id; "A MessagePack `bin` is not a
  # string". README, Codecs: "An error's message and traceback always go
  # out as valid UTF-8". A bin command ran the handler of the same bytes,
  # and one with bytes that are not UTF-8 was answered UnknownCommand with a
  # message that went out as bin, which the pool cannot read as text.
  def test_a_bin_command_is_an_invalid_request
    needs_msgpack
    w = spawn("msgpack")
    send_packed(w, { "id" => 1, "command" => "echo".b, "args" => {} })
    error = assert_failed(w.recv, 1, "InvalidRequest")
    assert_equal Encoding::UTF_8, error["message"].encoding
    send_packed(w, { "id" => 2, "command" => "\xff\xfe".b, "args" => {} })
    error = assert_failed(w.recv, 2, "InvalidRequest")
    assert_equal Encoding::UTF_8, error["message"].encoding, "a str, not a bin: #{error.inspect}"
    assert_ok(w.call(3, "echo", { "x" => 1 }), 3)
  end

  # README, The context: `ctx.worker_id` is "this worker's id in the pool
  # (`SNAKEPIT_WORKER_ID`, else the init ping's)"; protocol.md section 3:
  # strings are `str`, binary data `bin`. Under a C locale Ruby reads a
  # non-ASCII SNAKEPIT_WORKER_ID (a pool named "pöol") as binary: the ping
  # result carried it as `bin` (the pool reads the init ping's result as a
  # JSON Value, which has no binary type: section 3), and every non-ASCII
  # log line raised Encoding::CompatibilityError. A bin `worker_id` in the
  # init ping did the same.
  def test_the_worker_id_is_text_from_a_c_locale_environment_and_a_bin_init_ping_is_ignored
    needs_msgpack
    id = "pöol_worker_1_1"
    w = spawn("msgpack", env: { "SNAKEPIT_WORKER_ID" => id, "LC_ALL" => "C", "LANG" => "C" })
    ping = assert_ok(w.call(1, "ping", { "initialization" => true, "worker_id" => id }), 1)
    assert_equal [id, Encoding::UTF_8], [ping["worker_id"], ping["worker_id"].encoding]
    assert_equal({ "worker_id" => id, "encoding" => "UTF-8" }, assert_ok(w.call(2, "worker_id"), 2))

    w = spawn("msgpack")
    send_packed(w, { "id" => 1, "command" => "ping", "args" => { "initialization" => true, "worker_id" => "w\xff".b } })
    assert_ok(w.recv, 1)
    assert_equal({ "worker_id" => nil, "encoding" => nil }, assert_ok(w.call(2, "worker_id"), 2))
    assert_equal "unknown", assert_ok(w.call(3, "ping"), 3)["worker_id"]
  end

  # protocol.md section 4, host_reply: one whose `id` is not that of the
  # host call waited for is ignored ("an id that is not an integer"
  # included); one without `success: true` fails the host call with a
  # HostCallError of the error's type and message, HostError and "host call
  # failed" where it has none. A `cancel` whose id is "missing or not an
  # integer ... names nothing running". Here maps, arrays, floats, huge
  # integers and (MessagePack) ext values and bin strings stand where ids and
  # text belong; each host call still ends as the one host_reply with its
  # own id says, as a HostCallError whose type and message are Strings.
  def test_hostile_values_in_host_replies_and_cancels
    CODECS.each do |codec|
      w = spawn(codec)
      json = codec == "json"
      errors = [
        [{ "type" => { "a" => 1 }, "message" => [1, 2] }, nil, nil],
        [{ "type" => [1], "message" => { "m" => 1 } }, nil, nil],
        [{ "type" => 2**64 - 1, "message" => 1.5 }, "18446744073709551615", "1.5"],
        [{ "type" => nil, "message" => nil }, "HostError", "host call failed"],
        [{ "type" => "", "message" => "" }, "HostError", "host call failed"],
        [[1, 2], "HostError", nil],
        [1.5, "HostError", "1.5"],
        [nil, "HostError", "host call failed"],
        ["plain text", "HostError", "plain text"]
      ]
      errors << [{ "type" => 2**70, "message" => -(2**70) }, (2**70).to_s, (-(2**70)).to_s] if json
      unless json
        errors << [{ "type" => ext(-1, "\0\0\0\1"), "message" => "bytes \xff".b }, nil, "bytes \uFFFD"]
        errors << ["bin \xfe".b, "HostError", "bin \uFFFD"]
      end
      errors.each_with_index do |(error, type, message), i|
        id = i + 1
        w.request(id, "ask")
        call = w.recv
        assert_equal ["host_call", id], [call["type"], call["request_id"]], call.inspect
        stray = [{ "x" => call["id"] }, [call["id"]], call["id"].to_f, nil, call["id"].to_s, true, 2**64 - 1]
        stray += [2**64, 2**70] if json
        stray += [ext(0, [call["id"]].pack("C")), call["id"].to_s.b] unless json
        frames = stray.map { |bad| { "type" => "host_reply", "id" => bad, "success" => true, "result" => "stray" } }
        frames += [id.to_s, { "id" => id }, [id], id.to_f].map { |bad| { "type" => "cancel", "id" => bad } }
        frames << { "type" => "host_reply", "id" => call["id"], "success" => false, "error" => error }
        frames.each { |frame| json ? w.send_message(frame) : send_packed(w, frame) }
        result = assert_ok(w.recv, id)
        assert_equal true, result["strings"], "#{codec} #{error.inspect}: #{result.inspect}"
        assert_equal type, result["type"], "#{codec} #{error.inspect}" if type
        assert_equal message, result["message"], "#{codec} #{error.inspect}" if message
        refute_empty result["type"]
        refute_empty result["message"]
      end
      assert_serving(w, 99)
    end
  end

  # protocol.md section 3: ext values "reach handlers as the library's own
  # type and are written back as the same `ext`"; keys inside the data may
  # be integers, `bin`, booleans or nil, and "Ruby ... keep[s] them as they
  # are". Section 4: a payload that is not a map is a ProtocolError under id
  # 0, args that are not a map an InvalidRequest under the request's id, a
  # `type` the worker does not know a ProtocolError. The timestamp ext (-1)
  # is one more ext: not a map, and not turned into a Time.
  def test_ext_values_and_keys_that_are_not_strings
    needs_msgpack
    w = spawn("msgpack")
    stamp = ext(-1, [1, 2].pack("NN"))
    send_packed(w, stamp)
    assert_failed(w.recv, 0, "ProtocolError")
    send_packed(w, { "id" => 1, "command" => "echo", "args" => stamp })
    assert_failed(w.recv, 1, "InvalidRequest")
    send_packed(w, { "id" => stamp, "command" => "echo", "args" => {} })
    assert_failed(w.recv, 0, "InvalidRequest")
    send_packed(w, { "id" => 2, "command" => stamp, "args" => {} })
    assert_failed(w.recv, 2, "InvalidRequest")
    send_packed(w, { "type" => stamp, "id" => 3, "command" => "echo", "args" => {} })
    assert_failed(w.recv, 0, "ProtocolError")
    send_packed(w, { 1 => 4, nil => "echo", [1] => {} })
    assert_failed(w.recv, 0, "InvalidRequest")
    args = { "t" => stamp, "list" => [ext(5, ""), stamp], 1 => "int", nil => "nil", true => "true",
             [1, 2] => "array", { "k" => 1 } => "map", "b\xff".b => "bin", ext(3, "k") => "ext" }
    send_packed(w, { "id" => 5, "command" => "echo", "args" => args })
    echoed = assert_ok(w.recv, 5)["echoed"]
    assert_equal args, echoed
    assert_equal [MessagePack::ExtensionValue, -1], [echoed["t"].class, echoed["t"].type]
    assert_serving(w, 6)
  end

  # protocol.md section 4: a payload that does not decode is a
  # ProtocolError under id 0, and the worker keeps serving. The msgpack gem
  # sizes an array from its header before reading an element, so 9 bytes
  # announcing 2^32 - 1 elements made it raise NoMemoryError (where the
  # system refuses a 32 GiB allocation, as Linux does by default on a
  # smaller machine), which is no StandardError and ended the worker.
  def test_a_msgpack_array_header_announcing_four_billion_elements_is_a_protocol_error
    needs_msgpack
    w = spawn("msgpack")
    w.send_raw(SnakepitBridge::Wire.frame("\x81\xa2id\xdd\xff\xff\xff\xff".b))
    assert_failed(w.recv, 0, "ProtocolError")
    w.send_raw(SnakepitBridge::Wire.frame("\xdd\xff\xff\xff\xff".b))
    assert_failed(w.recv, 0, "ProtocolError")
    assert_serving(w, 1)
  end

  # protocol.md section 4: a payload that does not decode ("invalid UTF-8")
  # is a ProtocolError under id 0. JSON text can escape a lone surrogate
  # (`"\udfff"`), which has no UTF-8 form: Ruby's parser refused some (a
  # lone high surrogate in a value) and let the rest through as strings
  # whose bytes are not UTF-8, so a handler got text no codec writes back,
  # and such a `worker_id` in the init ping made every later ping fail. A
  # surrogate pair is a character like any other.
  def test_json_escapes_of_lone_surrogates_are_protocol_errors
    w = spawn
    ['{"id":1,"command":"\\udfff","args":{}}',
     '{"id":2,"command":"echo","args":{"s":"a\\udfff"}}',
     '{"id":3,"command":"echo","args":{"\\udfff":1}}',
     '{"id":4,"command":"echo","args":{"\\ud800":1}}',
     '{"id":5,"command":"ping","args":{"initialization":true,"worker_id":"\\udfff"}}',
     '{"type":"\\udc00"}'].each do |text|
      w.send_raw(SnakepitBridge::Wire.frame(text))
      assert_failed(w.recv, 0, "ProtocolError")
    end
    w.send_raw(SnakepitBridge::Wire.frame('{"id":6,"command":"echo","args":{"\\ud83d\\ude00":"\\ud83d\\ude00 \\\\udfff"}}'))
    assert_equal({ "\u{1F600}" => "\u{1F600} \\udfff" }, assert_ok(w.recv, 6)["echoed"])
    assert_equal "unknown", assert_ok(w.call(7, "ping"), 7)["worker_id"]
  end

  # protocol.md section 7: compute fails "with `Unsupported operation: X`"
  # for anything but its operations, and `a` and `b` "must be numbers
  # (booleans are not ...): anything else fails too", as failed replies of
  # type ArgumentError in Ruby. Section 3: a result integer past 2^64 - 1
  # has no MessagePack form, and "the Python and Ruby bridges answer such a
  # result with a failed reply". Other commands ignore or echo odd args;
  # `random` is "Node only".
  def test_generic_commands_with_arguments_of_the_wrong_types
    CODECS.each do |codec|
      w = spawn(codec)
      [{ "x" => 1 }, [1], nil, 42, true].each_with_index do |operation, i|
        error = assert_failed(w.call(i + 1, "compute", { "operation" => operation }), i + 1, "ArgumentError")
        assert_match(/\AUnsupported operation: /, error["message"])
      end
      ["NaN", "1", nil, { "a" => 1 }, [1], true, "Infinity"].each_with_index do |operand, i|
        %w[a b].each_with_index do |name, j|
          id = 10 + i * 2 + j
          error = assert_failed(w.call(id, "compute", { "operation" => "add", name => operand }), id, "ArgumentError")
          assert_match(/must be numbers/, error["message"])
        end
      end
      big = w.call(30, "compute", { "operation" => "multiply", "a" => 2**63, "b" => 2**63 })
      if codec == "json"
        assert_equal 2**126, assert_ok(big, 30)["result"]
      else
        assert_equal [30, false], [big["id"], big["success"]], big.inspect
      end
      odd = { "initialization" => { "x" => 1 }, "worker_id" => [1], "health_check" => "yes" }
      assert_equal odd, assert_ok(w.call(31, "echo", odd), 31)["echoed"]
      assert_equal "unknown", assert_ok(w.call(32, "ping", odd), 32)["worker_id"]
      assert_equal "ok", assert_ok(w.call(33, "info", odd), 33)["status"]
      error = assert_failed(w.call(34, "random", { "type" => { "x" => 1 } }), 34, "UnknownCommand")
      assert_equal "Unknown command: random", error["message"]
      assert_serving(w, 35)
    end
  end

  FIONREAD = 0x541B # Linux

  # Whether the worker's stdout pipe came to hold a whole pipe's worth
  # (64 KiB, Linux's default) unread, within 30 s: its next write blocks.
  def pipe_filled?(worker)
    out = worker.instance_variable_get(:@from_worker)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30
    loop do
      unread = [0].pack("l")
      out.ioctl(FIONREAD, unread)
      return true if unread.unpack1("l") >= 65_536
      return false if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
  end

  # protocol.md section 6: "A worker exits cleanly on SIGTERM"; README:
  # "SIGTERM or the end of stdin stops the worker with exit status 0". Here
  # the pool stops reading stdout while a handler streams (section 5 says it
  # may), so the worker is blocked inside a frame write when SIGTERM comes.
  def test_sigterm_while_blocked_writing_a_frame_the_pool_does_not_read_exits_0
    CODECS.each do |codec|
      w = spawn(codec)
      w.request(1, "flood", {}, stream: true)
      assert_includes w.stderr_until("flood: started", timeout: 30), "flood: started"
      assert pipe_filled?(w), "#{codec}: the worker never filled its stdout pipe"
      w.signal("TERM")
      status = w.wait(30)
      refute_nil status, "#{codec}: still running 30 s after SIGTERM"
      assert_equal 0, status.exitstatus, "#{codec}: #{status.inspect} #{w.stderr[-400..]}"
    end
  end
end
