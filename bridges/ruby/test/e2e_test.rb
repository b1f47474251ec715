# frozen_string_literal: true

require_relative "test_helper"

# Runs the real worker scripts as child processes and speaks frames to them.
# Every test runs once per codec (see the subclasses at the bottom).
module EndToEndTests
  def setup
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
  end

  def spawn_worker(script = TestPaths::GENERIC_WORKER, **options)
    WorkerProcess.new(script, codec: codec, **options).tap { |w| @workers << w }
  end

  def example_worker(**options)
    spawn_worker(TestPaths::EXAMPLE_WORKER, **options)
  end

  def assert_ok(reply, id)
    assert_equal id, reply["id"]
    assert_equal true, reply["success"], reply.inspect
    reply["result"]
  end

  def assert_failed(reply, id, type)
    assert_equal id, reply["id"]
    assert_equal false, reply["success"], reply.inspect
    assert_equal type, reply["error"]["type"], reply.inspect
    reply["error"]
  end

  def test_hello_comes_first
    hello = spawn_worker.hello
    assert_equal "hello", hello["type"]
    assert_equal 1, hello["protocol"]
    assert_kind_of Integer, hello["pid"]
    assert_equal "snakepit-ruby/#{SnakepitBridge::VERSION}", hello["bridge"]
    assert_match(/\ACRuby \d/, hello["runtime"])
    assert_equal({ "max_concurrency" => 1, "cancel" => false, "sigint" => true,
                   "streaming" => true, "host_calls" => true, "pipeline" => true }, hello["capabilities"])
  end

  def test_init_ping_health_ping_and_worker_id
    worker = spawn_worker
    args = { "initialization" => true, "worker_id" => "pool_worker_1_210" }
    result = assert_ok(worker.call(1, "ping", args), 1)
    assert_equal "ok", result["status"]
    assert_equal "generic_ruby", result["bridge_type"]
    assert_equal "pool_worker_1_210", result["worker_id"]
    assert_equal args, result["echo"]
    assert_equal worker.pid, result["pid"]
    assert_equal RUBY_VERSION, result["ruby_version"]
    assert_equal 1, result["requests_handled"]
    %w[uptime timestamp].each { |k| assert_kind_of Float, result[k] }
    health = assert_ok(worker.call(2, "ping", { "health_check" => true }), 2)
    assert_equal 2, health["requests_handled"]
    assert_equal "pool_worker_1_210", health["worker_id"]
  end

  def test_worker_id_from_environment_wins
    worker = spawn_worker(env: { "SNAKEPIT_WORKER_ID" => "from_env" })
    result = assert_ok(worker.call(1, "ping", { "initialization" => true, "worker_id" => "other" }), 1)
    assert_equal "from_env", result["worker_id"]
  end

  def test_echo_and_info
    worker = spawn_worker
    result = assert_ok(worker.call(3, "echo", { "message" => "h\u00e9llo \u2713" }), 3)
    assert_equal "ok", result["status"]
    assert_equal({ "message" => "h\u00e9llo \u2713" }, result["echoed"])
    info = assert_ok(worker.call(4, "info"), 4)
    assert_equal "ok", info["status"]
    assert_equal %w[ping echo compute info], info["bridge_info"]["supported_commands"]
    assert_equal 2, info["bridge_info"]["total_requests"]
    assert_equal codec, info["system_info"]["codec"]
  end

  def test_compute
    worker = spawn_worker
    result = assert_ok(worker.call(7, "compute", { "operation" => "add", "a" => 5, "b" => 3 }), 7)
    assert_equal({ "status" => "ok", "operation" => "add", "inputs" => { "a" => 5, "b" => 3 }, "result" => 8 },
                 result.reject { |k, _| k == "timestamp" })
    {
      { "a" => 5 } => 5,
      { "operation" => "subtract", "a" => 5, "b" => 3 } => 2,
      { "operation" => "multiply", "a" => 5, "b" => 3 } => 15,
      { "operation" => "divide", "a" => 7, "b" => 2 } => 3.5,
      { "operation" => "power", "a" => 2, "b" => 10 } => 1024,
      { "operation" => "power", "a" => 2, "b" => -1 } => 0.5,
      { "operation" => "sqrt", "a" => 16 } => 4.0
    }.each_with_index do |(args, expected), i|
      assert_equal expected, assert_ok(worker.call(10 + i, "compute", args), 10 + i)["result"], args.inspect
    end
    {
      { "operation" => "divide", "a" => 1, "b" => 0 } => "Division by zero",
      { "operation" => "sqrt", "a" => -4 } => "Square root of negative number",
      { "operation" => "modulo", "a" => 1, "b" => 2 } => "Unsupported operation: modulo"
    }.each_with_index do |(args, message), i|
      error = assert_failed(worker.call(20 + i, "compute", args), 20 + i, "ArgumentError")
      assert_equal message, error["message"]
      assert_kind_of String, error["traceback"]
    end
  end

  def test_unknown_command_and_invalid_requests
    worker = spawn_worker
    error = assert_failed(worker.call(5, "frobnicate"), 5, "UnknownCommand")
    assert_equal "Unknown command: frobnicate", error["message"]
    worker.send_message({ "id" => 6, "args" => {} })
    assert_failed(worker.recv, 6, "InvalidRequest")
    worker.send_message({ "command" => "ping", "args" => {} })
    assert_failed(worker.recv, 0, "InvalidRequest")
    worker.send_message({ "id" => 8, "command" => "ping", "args" => [1] })
    assert_failed(worker.recv, 8, "InvalidRequest")
    assert_ok(worker.call(9, "ping"), 9)
    # Null arguments are no arguments, as a missing `args` is.
    worker.send_message({ "id" => 10, "command" => "ping", "args" => nil })
    assert_ok(worker.recv, 10)
    # A frame type the worker does not know is a ProtocolError under id 0.
    worker.send_message({ "type" => "telepathy", "id" => 11 })
    assert_failed(worker.recv, 0, "ProtocolError")
    assert_ok(worker.call(12, "ping"), 12)
  end

  def test_garbage_frame_gets_protocol_error_and_worker_keeps_serving
    worker = spawn_worker
    worker.send_raw(SnakepitBridge::Wire.frame("\xc1 this is not a frame {".b))
    error = assert_failed(worker.recv, 0, "ProtocolError")
    refute_empty error["message"]
    worker.send_raw([0].pack("N"))
    assert_failed(worker.recv, 0, "ProtocolError")
    assert_ok(worker.call(2, "ping"), 2)
  end

  def test_too_large_frame_is_skipped
    worker = spawn_worker
    size = 64 * 1024 * 1024 + 1
    writer = Thread.new do
      worker.send_raw([size].pack("N"))
      worker.send_raw("\0".b * size)
    end
    assert_failed(worker.recv(30), 0, "ProtocolError")
    writer.join
    assert_ok(worker.call(3, "ping"), 3)
  end

  def test_stdin_eof_exits_zero
    worker = spawn_worker
    assert_ok(worker.call(1, "ping"), 1)
    worker.close_stdin
    status = worker.wait
    assert status, "worker exits on EOF"
    assert_equal 0, status.exitstatus
  end

  def test_sigterm_exits_zero_even_during_a_handler
    worker = example_worker
    worker.request(1, "sleep", { "seconds" => 30 })
    assert_equal "started", worker.recv["data"]
    worker.signal("TERM")
    status = worker.wait
    assert status, "worker exits on SIGTERM"
    assert_equal 0, status.exitstatus
  end

  def test_user_output_goes_to_stderr
    worker = example_worker
    assert_equal "quiet reply", assert_ok(worker.call(1, "noisy"), 1)
    assert_ok(worker.call(2, "ping"), 2)
    assert_empty worker.drain_stdout, "nothing but frames on stdout"
    worker.stop
    %w[puts\ to\ stdout print\ to\ stdout $stdout.write STDOUT.write from\ a\ child\ process logger\ line].each do |text|
      assert_includes worker.stderr, text
    end
  end

  def test_context_fields
    worker = example_worker
    worker.call(1, "ping", { "initialization" => true, "worker_id" => "w7" })
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    result = assert_ok(worker.call(2, "context", {}, session_id: "user_123", traceparent: tp, stream: true), 2)
    assert_equal({ "request_id" => 2, "session_id" => "user_123", "worker_id" => "w7", "traceparent" => tp,
                   "stream" => true, "cancelled" => false }, result)
    result = assert_ok(worker.call(3, "context"), 3)
    assert_nil result["session_id"]
    assert_nil result["traceparent"]
    assert_equal false, result["stream"]
  end

  def test_method_object_handler
    worker = example_worker
    assert_equal 49, assert_ok(worker.call(1, "square", { "x" => 7 }), 1)
  end

  def test_streaming_chunks_precede_the_reply
    worker = example_worker
    worker.request(4, "count", { "n" => 3 }, stream: true)
    chunks = 3.times.map { worker.recv }
    chunks.each_with_index do |chunk, i|
      assert_equal({ "type" => "chunk", "id" => 4, "data" => { "index" => i } }, chunk)
    end
    assert_equal({ "count" => 3, "stream" => true }, assert_ok(worker.recv, 4))
  end

  def test_handler_exception_becomes_structured_error
    worker = example_worker
    error = assert_failed(worker.call(5, "fail", { "message" => "kaboom" }), 5, "ExampleError")
    assert_equal "kaboom", error["message"]
    assert_includes error["traceback"], "example_worker.rb"
    assert_ok(worker.call(6, "ping"), 6)
  end

  def test_host_calls_and_session_helpers
    worker = example_worker
    worker.request(9, "session_roundtrip", { "value" => [1, "two"] })
    store = {}
    seen = []
    reply = loop do
      message = worker.recv
      break message unless message["type"] == "host_call"

      seen << message["function"]
      assert_equal 9, message["request_id"]
      answer = { "type" => "host_reply", "id" => message["id"] }
      key = message["args"]["key"]
      case message["function"]
      when "session.set" then store[key] = message["args"]["value"]
                              answer.merge!("success" => true, "result" => nil)
      when "session.get" then answer.merge!("success" => true, "result" => store[key])
      when "session.delete" then answer.merge!("success" => true, "result" => !store.delete(key).nil?)
      else answer.merge!("success" => false,
                         "error" => { "type" => "UnknownFunction", "message" => "no host function named nope" })
      end
      worker.send_message(answer)
    end
    assert_equal %w[session.set session.get session.delete nope], seen
    result = assert_ok(reply, 9)
    assert_equal [1, "two"], result["got"]
    assert_equal true, result["deleted"]
    assert_equal({ "type" => "UnknownFunction", "message" => "no host function named nope" }, result["missing"])
  end

  def test_cancel_frame_during_host_call
    worker = example_worker
    worker.request(11, "wait_host")
    call = worker.recv
    assert_equal "host_call", call["type"]
    worker.send_message({ "type" => "cancel", "id" => 11 })
    error = assert_failed(worker.recv, 11, "Cancelled")
    assert_equal "request 11 was cancelled", error["message"]
    # A late answer to the abandoned host call is ignored.
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true, "result" => 1 })
    assert_ok(worker.call(12, "ping"), 12)
  end

  def test_sigint_during_host_call
    worker = example_worker
    worker.request(15, "wait_host")
    assert_equal "host_call", worker.recv["type"]
    worker.signal("INT")
    assert_failed(worker.recv, 15, "Cancelled")
    assert_ok(worker.call(16, "ping"), 16)
  end

  def test_sigint_cancels_the_running_handler_and_is_ignored_between
    worker = example_worker
    worker.request(13, "sleep", { "seconds" => 30 })
    assert_equal "started", worker.recv["data"]
    worker.signal("INT")
    assert_failed(worker.recv, 13, "Cancelled")
    worker.signal("INT") # idle: must not kill the worker
    sleep 0.1
    assert worker.alive?
    assert_ok(worker.call(14, "ping"), 14)
  end

  def test_sigint_storm_never_kills_the_worker
    worker = example_worker
    # Fast handlers and ones that sleep, so signals land both inside
    # handlers and in the gaps around them.
    outcomes = worker.during_sigint_storm do
      (1..300).map do |id|
        reply = id.even? ? worker.call(id, "ping") : worker.call(id, "sleep", { "seconds" => 0.002 })
        assert_equal id, reply["id"]
        reply["success"] ? :ok : reply["error"]["type"]
      end
    end
    assert_empty(outcomes.reject { |o| [:ok, "Cancelled"].include?(o) })
    assert_ok(worker.call(1000, "ping"), 1000)
  end

  def test_unencodable_result_is_a_failed_reply
    skip "NaN has a MessagePack form" if codec == "msgpack"
    worker = example_worker
    error = assert_failed(worker.call(1, "bad_result"), 1, "JSON::GeneratorError")
    assert_match(/cannot be encoded as json/, error["message"])
    assert_ok(worker.call(2, "ping"), 2)
  end
end

class EndToEndJsonTest < Minitest::Test
  include EndToEndTests

  def codec
    "json"
  end
end

class EndToEndMsgpackTest < Minitest::Test
  include EndToEndTests

  def codec
    "msgpack"
  end

  def test_binary_round_trip
    worker = example_worker
    result = assert_ok(worker.call(1, "reverse_bytes", { "data" => "\x00\x01\xfe\xff".b }), 1)
    assert_equal "\xff\xfe\x01\x00".b, result
    assert_equal Encoding::BINARY, result.encoding
  end
end
