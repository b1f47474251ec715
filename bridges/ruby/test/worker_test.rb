# frozen_string_literal: true

require_relative "test_helper"

# The worker in-process, over pipes (no signals: it does not own the stdio).
class WorkerTest < Minitest::Test
  Wire = SnakepitBridge::Wire

  def setup
    @to_worker_r, @to_worker = IO.pipe
    @from_worker, @from_worker_w = IO.pipe
    @worker = SnakepitBridge::Worker.new(codec: "json", input: @to_worker_r, output: @from_worker_w)
    @codec = Wire.codec("json")
  end

  def start
    @thread = Thread.new { @worker.run }
    hello = recv
    assert_equal "hello", hello["type"]
  end

  def teardown
    @to_worker.close unless @to_worker.closed?
    @thread&.join(5)
  end

  def send_request(id, command, args = {}, **extra)
    message = { "id" => id, "command" => command, "args" => args }.merge(extra.transform_keys(&:to_s))
    @to_worker.write(Wire.frame(@codec.encode(message)))
  end

  def recv
    @codec.decode(Wire.read_frame(@from_worker))
  end

  def test_block_lambda_and_method_handlers
    @worker.command("block") { |args, ctx| [args["x"], ctx.request_id] }
    @worker.command("one_arg_block") { |args| args["x"] }
    @worker.command("lambda", ->(args) { args["x"] * 2 })
    @worker.command("lambda2", ->(args, ctx) { ctx.command + args["x"].to_s })
    @worker.command(:symbol_name) { |args, _ctx| args["x"] + 3 }
    start
    send_request(1, "block", { "x" => 1 })
    assert_equal [1, 1], recv["result"]
    send_request(2, "one_arg_block", { "x" => 2 })
    assert_equal 2, recv["result"]
    send_request(3, "lambda", { "x" => 3 })
    assert_equal 6, recv["result"]
    send_request(4, "lambda2", { "x" => 4 })
    assert_equal "lambda24", recv["result"]
    send_request(5, "symbol_name", { "x" => 4 })
    assert_equal 7, recv["result"]
  end

  def test_method_object_with_one_parameter
    obj = Object.new
    def obj.double(args) = args["x"] * 2
    @worker.command("double", obj.method(:double))
    start
    send_request(1, "double", { "x" => 21 })
    assert_equal 42, recv["result"]
  end

  def test_commands_lists_ping_first
    SnakepitBridge::Generic.register(@worker)
    assert_equal %w[ping echo compute info], @worker.commands
  end

  def test_handler_needs_a_callable
    assert_raises(ArgumentError) { @worker.command("nothing") }
  end

  def test_reply_shape_and_timestamp
    start
    send_request(1, "ping")
    reply = recv
    assert_equal %w[id success result timestamp], reply.keys
    assert_match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\z/, reply["timestamp"])
  end

  def test_request_queued_during_host_call_runs_afterwards
    @worker.command("ask") { |_args, ctx| ctx.call_host("f", {}) }
    start
    send_request(1, "ask")
    call = recv
    assert_equal "host_call", call["type"]
    send_request(2, "ping") # arrives before the host's answer
    @to_worker.write(Wire.frame(@codec.encode({ "type" => "host_reply", "id" => call["id"],
                                                "success" => true, "result" => "answer" })))
    assert_equal({ "id" => 1, "result" => "answer" }, recv.slice("id", "result"))
    assert_equal 2, recv["id"]
  end

  # README: "`ctx.traceparent`, `ctx.tracestate`, `ctx.baggage` | W3C trace
  # context and baggage of the caller, or `nil`"; the request's `baggage`
  # field is the W3C baggage string (docs/protocol.md).
  def test_baggage_is_the_request_field_or_nil
    @worker.command("baggage") { |_args, ctx| { "baggage" => ctx.baggage, "tracestate" => ctx.tracestate } }
    start
    baggage = "userId=alice,serverNode=DF%2028;q=0.5"
    send_request(1, "baggage", {}, baggage: baggage, tracestate: "congo=t61rcWkgMzE",
                                   traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert_equal({ "baggage" => baggage, "tracestate" => "congo=t61rcWkgMzE" }, recv["result"])
    send_request(2, "baggage")
    assert_equal({ "baggage" => nil, "tracestate" => nil }, recv["result"])
  end

  # docs/protocol.md, section 4: an optional field whose type is not the
  # table's is absent; timeout_ms is an integer >= 0.
  def test_optional_fields_of_the_wrong_type_read_as_nil
    @worker.command("ctx") do |_args, ctx|
      [ctx.session_id, ctx.traceparent, ctx.tracestate, ctx.baggage, ctx.timeout_ms]
    end
    start
    send_request(1, "ctx", {}, session_id: 5, traceparent: true, tracestate: { "a" => 1 }, baggage: ["k=v"],
                               timeout_ms: "100")
    assert_equal [nil] * 5, recv["result"]
    [1.5, -0.5, 1e300, -5, true].each_with_index do |timeout, n|
      send_request(10 + n, "ctx", {}, timeout_ms: timeout)
      assert_nil recv["result"][4], "timeout_ms #{timeout}"
    end
    [0, 1500, 2**64 - 1].each_with_index do |timeout, n|
      send_request(20 + n, "ctx", {}, timeout_ms: timeout)
      assert_equal timeout, recv["result"][4]
    end
    # A MessagePack bin arrives as a binary String: no text.
    ctx = SnakepitBridge::Context.new(@worker, 1, "ctx", { "session_id" => "s1".b, "baggage" => "k=v" })
    assert_nil ctx.session_id
    assert_equal "k=v", ctx.baggage
  end

  # A host_reply for the waiting host call without success: true fails it:
  # the error's type and message, else HostError and a message of its own.
  def test_host_reply_without_success_true_fails_the_host_call
    @worker.command("ask") do |_args, ctx|
      { "ok" => ctx.call_host("f", {}) }
    rescue SnakepitBridge::HostCallError => e
      { "type" => e.error_type, "message" => e.message }
    end
    start
    failed = { "type" => "HostError", "message" => "host call failed" }
    [
      [{}, failed],
      [{ "success" => "yes", "result" => "r" }, failed],
      [{ "success" => false }, failed],
      [{ "success" => false, "error" => { "message" => "m" } }, { "type" => "HostError", "message" => "m" }],
      [{ "success" => false, "error" => { "type" => "T" } }, { "type" => "T", "message" => "host call failed" }],
      [{ "success" => false, "error" => 5 }, { "type" => "HostError", "message" => "5" }],
      [{ "success" => true }, { "ok" => nil }],
    ].each_with_index do |(fields, expected), n|
      send_request(n + 1, "ask")
      call = recv
      assert_equal "host_call", call["type"]
      @to_worker.write(Wire.frame(@codec.encode({ "type" => "host_reply", "id" => call["id"] }.merge(fields))))
      assert_equal expected, recv["result"], fields.inspect
    end
  end

  # A host_reply or cancel whose id is not an Integer names nothing, not
  # even the host call or request whose number it holds as a float.
  def test_host_reply_and_cancel_ids_that_are_not_integers_name_nothing
    @worker.command("ask") { |_args, ctx| ctx.call_host("f", {}) }
    start
    send_request(1, "ask")
    call = recv
    [{ "type" => "cancel", "id" => 1.0 },
     { "type" => "host_reply", "id" => call["id"].to_f, "success" => true, "result" => "float" },
     { "type" => "host_reply", "id" => call["id"], "success" => true, "result" => "answer" }].each do |frame|
      @to_worker.write(Wire.frame(@codec.encode(frame)))
    end
    assert_equal({ "id" => 1, "success" => true, "result" => "answer" }, recv.slice("id", "success", "result"))
  end

  def test_run_returns_on_eof
    start
    @to_worker.close
    assert @thread.join(5)
  end
end
