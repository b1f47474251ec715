# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# Promises of README.md (and of docs/bridges.md, docs/protocol.md where they
# describe the Ruby worker) that the other suites do not already show,
# checked against real worker processes over pipes. Each test quotes the
# promise it checks.
class ReadmeAuditTest < Minitest::Test
  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"
    worker = SnakepitBridge::Worker.new

    # README: "`ping` is built in ...; register your own `ping` to replace it."
    worker.command("ping") { |args, _ctx| { "status" => "ok", "mine" => true, "echo" => args } }
    worker.command("ctx") do |_args, ctx|
      { "timeout_ms" => ctx.timeout_ms, "command" => ctx.command, "request_id" => ctx.request_id }
    end
    worker.command("session_brackets") do |args, ctx|
      ctx.session["k"] = args["value"]
      { "got" => ctx.session["k"] }
    end
    worker.command("spin") do |_args, _ctx|
      n = 0
      begin
        $stderr.puts "spin: started"
        $stderr.flush
        loop { n += 1 }
      ensure
        $stderr.puts "spin: ensure ran"
        $stderr.flush
      end
    end
    worker.command("block_on_io") do |_args, _ctx|
      reader, writer = IO.pipe
      $stderr.puts "io: started (#{writer.fileno})"
      $stderr.flush
      reader.read # nothing is ever written: blocks until interrupted
    end
    worker.command("rescue_cancelled") do |_args, ctx|
      begin
        $stderr.puts "rescue: started"
        $stderr.flush
        sleep 30
      rescue SnakepitBridge::Cancelled
        nil
      end
      checked = begin
        ctx.check_cancelled!
        "no raise"
      rescue SnakepitBridge::Cancelled => e
        e.class.name
      end
      $stderr.puts "rescue: cancelled?=#{ctx.cancelled?} check_cancelled!=#{checked}"
      $stderr.flush
      "swallowed the cancellation"
    end
    worker.command("object") { |_args, _ctx| Object.new }
    worker.command("recurse") do |_args, _ctx|
      down = ->(n) { down.call(n + 1) + 1 }
      down.call(0)
    end
    worker.command("read_stdin") do |_args, _ctx|
      { "$stdin" => $stdin.read, "STDIN" => STDIN.read, "child" => `cat` }
    end
    worker.command("write_fd1") do |_args, _ctx|
      IO.for_fd(1, autoclose: false).syswrite("raw write to fd 1\n")
      "written"
    end
    worker.command("echo_args") { |args, _ctx| args }
    worker.command("deep_result") do |args, _ctx|
      value = 1
      args.fetch("n").times { value = [value] }
      value
    end
    worker.command("ordered") { |_args, _ctx| { zebra: 1, "apple" => [2, { mango: nil }], kiwi: "k" } }
    worker.command("raise_interrupt") { |_args, _ctx| raise Interrupt, "raised by the handler" }
    worker.run
  RUBY

  include ScriptWorkers

  def codecs
    msgpack? ? %w[json msgpack] : %w[json]
  end

  def msgpack?
    require "msgpack"
    true
  rescue LoadError
    false
  end

  def assert_ok(reply, id)
    assert_equal id, reply["id"], reply.inspect
    assert_equal true, reply["success"], reply.inspect
    reply["result"]
  end

  def assert_failed(reply, id, type)
    assert_equal id, reply["id"], reply.inspect
    assert_equal false, reply["success"], reply.inspect
    assert_equal type, reply["error"]["type"], reply.inspect
    reply["error"]
  end

  def nested(levels)
    value = 1
    levels.times { value = [value] }
    value
  end

  def depth(value)
    case value
    when Array then 1 + (value.map { |v| depth(v) }.max || 0)
    when Hash then 1 + (value.values.map { |v| depth(v) }.max || 0)
    else 0
    end
  end

  # README: "`ping` is built in (the pool's init and health checks use it);
  # register your own `ping` to replace it."
  def test_an_own_ping_replaces_the_built_in_one
    worker = spawn_worker
    result = assert_ok(worker.call(1, "ping", { "initialization" => true, "worker_id" => "w1" }), 1)
    assert_equal({ "status" => "ok", "mine" => true, "echo" => { "initialization" => true, "worker_id" => "w1" } },
                 result)
  end

  # README, the context: "`ctx.command` | the command's name";
  # "`ctx.timeout_ms` | milliseconds the caller had left when the request was
  # sent, or `nil`".
  def test_ctx_command_and_timeout_ms
    worker = spawn_worker
    assert_equal({ "timeout_ms" => 1234, "command" => "ctx", "request_id" => 7 },
                 assert_ok(worker.call(7, "ctx", {}, timeout_ms: 1234), 7))
    assert_equal({ "timeout_ms" => nil, "command" => "ctx", "request_id" => 8 }, assert_ok(worker.call(8, "ctx"), 8))
  end

  # docs/bridges.md, the context: the Ruby session store is
  # "`ctx.session.get(k)`, `.set(k, v)`, `.delete(k)` (also `[]`, `[]=`)",
  # host calls to `session.get` / `session.set`.
  def test_session_brackets_are_host_calls
    worker = spawn_worker
    worker.request(3, "session_brackets", { "value" => [1, "two"] }, session_id: "s1")
    set = worker.recv
    assert_equal ["host_call", 3, "session.set", { "key" => "k", "value" => [1, "two"] }],
                 set.values_at("type", "request_id", "function", "args")
    worker.send_message({ "type" => "host_reply", "id" => set["id"], "success" => true, "result" => nil })
    get = worker.recv
    assert_equal ["host_call", "session.get", { "key" => "k" }], get.values_at("type", "function", "args")
    worker.send_message({ "type" => "host_reply", "id" => get["id"], "success" => true, "result" => [1, "two"] })
    assert_equal({ "got" => [1, "two"] }, assert_ok(worker.recv, 3))
  end

  # README: "If a handler is running, `SnakepitBridge::Cancelled` is raised in
  # it (wherever it is: `sleep`, IO, Ruby code, ...) and the reply is a failed
  # reply of type `Cancelled`"; "use `ensure` for clean-up".
  def test_sigint_interrupts_pure_ruby_code_and_runs_ensure
    worker = spawn_worker
    worker.request(1, "spin")
    assert_includes worker.stderr_until("spin: started"), "spin: started"
    worker.signal("INT")
    error = assert_failed(worker.recv, 1, "Cancelled")
    assert_equal "request 1 was cancelled", error["message"]
    assert_includes worker.stderr_until("spin: ensure ran"), "spin: ensure ran"
    assert_ok(worker.call(2, "echo_args", { "x" => 1 }), 2)
  end

  def test_sigint_interrupts_a_handler_blocked_on_io
    worker = spawn_worker
    worker.request(1, "block_on_io")
    assert_includes worker.stderr_until("io: started"), "io: started"
    worker.signal("INT")
    assert_failed(worker.recv, 1, "Cancelled")
    assert_ok(worker.call(2, "echo_args", { "x" => 1 }), 2)
  end

  # README: "`ctx.cancelled?` | whether the request was cancelled";
  # "`ctx.check_cancelled!` | raise `SnakepitBridge::Cancelled` if it was".
  # Even a handler that rescues Cancelled explicitly and returns is answered
  # `Cancelled`, once.
  def test_a_handler_that_rescues_cancelled_still_gets_a_cancelled_reply
    worker = spawn_worker
    worker.request(1, "rescue_cancelled")
    assert_includes worker.stderr_until("rescue: started"), "rescue: started"
    worker.signal("INT")
    assert_failed(worker.recv, 1, "Cancelled")
    line = "rescue: cancelled?=true check_cancelled!=SnakepitBridge::Cancelled"
    assert_includes worker.stderr_until(line), line
    assert_ok(worker.call(2, "echo_args"), 2)
    assert_equal "", worker.drain_stdout(0.1), "no second reply for request 1"
  end

  # README, Codecs: "A result the codec cannot represent (`Float::NAN` in
  # JSON, an arbitrary object in MessagePack) becomes a failed reply instead
  # of a broken frame."
  def test_an_arbitrary_object_under_msgpack_is_a_failed_reply
    skip "the msgpack gem is not installed" unless msgpack?
    worker = spawn_worker(codec: "msgpack")
    reply = worker.call(1, "object")
    assert_equal false, reply["success"], reply.inspect
    assert_match(/cannot be encoded as msgpack/, reply["error"]["message"])
    assert_ok(worker.call(2, "echo_args", { "x" => 1 }), 2)
  end

  # README, Codecs: without the msgpack gem "the worker stops at start-up with
  # a message saying so". A msgpack.rb earlier on the load path that raises
  # LoadError stands in for the missing gem.
  def test_without_the_msgpack_gem_the_worker_stops_at_start_up
    fake = File.join(@dir, "fake_gems")
    FileUtils.mkdir_p(fake)
    File.write(File.join(fake, "msgpack.rb"), "raise LoadError, 'cannot load such file -- msgpack'\n")
    worker = WorkerProcess.new(TestPaths::GENERIC_WORKER, codec: "json", env: { "SNAKEPIT_CODEC" => "msgpack" },
                                                          ruby_args: ["-I", fake], expect_hello: false)
    @workers << worker
    status = worker.wait
    refute_nil status, "the worker stops"
    refute_equal 0, status.exitstatus
    assert_includes worker.stderr, "gem install msgpack"
    assert_equal "", worker.drain_stdout(0), "no hello, nothing on stdout"
  end

  # README, Errors: "the handler raises | `{type: <exception class name>,
  # message, traceback}`", here a SystemStackError (not a StandardError) from
  # runaway recursion; the worker serves on.
  def test_a_stack_overflow_in_a_handler_is_a_failed_reply
    worker = spawn_worker
    error = assert_failed(worker.call(1, "recurse"), 1, "SystemStackError")
    assert_kind_of String, error["traceback"]
    assert_ok(worker.call(2, "echo_args"), 2)
  end

  # README, Standard output: the worker points "fd 0 at `/dev/null`. So
  # `puts`, `print`, `STDOUT.write`, C extensions and child processes all
  # write to the log, and nothing can read frames meant for the worker."
  def test_user_code_reads_nothing_from_stdin_and_raw_fd_1_writes_go_to_stderr
    worker = spawn_worker
    worker.request(1, "read_stdin")
    worker.request(2, "echo_args", { "next" => "frame" }) # must reach the worker, not the handler
    assert_equal({ "$stdin" => "", "STDIN" => "", "child" => "" }, assert_ok(worker.recv, 1))
    assert_equal({ "next" => "frame" }, assert_ok(worker.recv, 2))
    assert_equal "written", assert_ok(worker.call(3, "write_fd1"), 3)
    assert_ok(worker.call(4, "echo_args"), 4)
    assert_equal "", worker.drain_stdout(0.1), "nothing but frames on stdout"
    assert_includes worker.stderr_until("raw write to fd 1"), "raw write to fd 1"
  end

  # protocol.md section 4, "Frames a worker cannot use", and the README's
  # Errors table: a payload that is not a map or not valid UTF-8 ->
  # `ProtocolError` with id 0; no usable id -> `InvalidRequest` under id 0; a
  # command that is not a string -> `InvalidRequest` under the request's id.
  # The worker keeps serving.
  def test_hostile_frames_get_the_documented_replies
    codecs.each do |codec|
      worker = spawn_worker(codec: codec)
      not_a_map = codec == "json" ? "[1,2]" : "\x92\x01\x02".b
      worker.send_raw(SnakepitBridge::Wire.frame(not_a_map))
      assert_failed(worker.recv, 0, "ProtocolError")
      bad_utf8 = codec == "json" ? "{\"id\":1,\"command\":\"echo_args\",\"args\":{\"s\":\"\xff\"}}".b : "\x81\xa1\xff\x01".b
      worker.send_raw(SnakepitBridge::Wire.frame(bad_utf8))
      error = assert_failed(worker.recv, 0, "ProtocolError")
      assert_match(/UTF-8/, error["message"])
      [0, -3, 1.5, "7", true, nil].each do |id|
        worker.send_message({ "id" => id, "command" => "echo_args", "args" => {} })
        assert_failed(worker.recv, 0, "InvalidRequest")
      end
      worker.send_message({ "id" => 5, "command" => 42, "args" => {} })
      assert_failed(worker.recv, 5, "InvalidRequest")
      worker.send_message({ "type" => "hello", "protocol" => 1 })
      assert_failed(worker.recv, 0, "ProtocolError")
      assert_equal({ "x" => codec }, assert_ok(worker.call(6, "echo_args", { "x" => codec }), 6))
    end
  end

  # protocol.md section 2: "a call's arguments or result may nest 126 levels
  # ... The bundled bridges read and write up to that limit in both codecs."
  def test_frames_nesting_127_levels_are_read_and_written
    codecs.each do |codec|
      worker = spawn_worker(codec: codec)
      # request map, args map, then 125 arrays: 127 levels.
      request = { "id" => 1, "command" => "echo_args", "args" => { "v" => nested(125) } }
      assert_equal 127, depth(request)
      worker.send_message(request)
      reply = worker.recv
      assert_ok(reply, 1)
      assert_equal 127, depth(reply)
      # reply map, then a result of 126 levels: 127.
      reply = worker.call(2, "deep_result", { "n" => 126 })
      assert_ok(reply, 2)
      assert_equal 127, depth(reply), codec
    end
  end

  # README, Codecs: "JSON ... Hashes go out compact with their keys in
  # insertion order; symbol keys become strings." Checked on the bytes of a
  # real reply.
  def test_json_replies_are_compact_keep_key_order_and_stringify_symbols
    worker = spawn_worker
    worker.request(1, "ordered")
    out = worker.instance_variable_get(:@from_worker)
    assert IO.select([out], nil, nil, 10), "a reply within 10 s"
    payload = SnakepitBridge::Wire.read_frame(out)
    assert_match(/\A\{"id":1,"success":true,"result":\{"zebra":1,"apple":\[2,\{"mango":null\}\],"kiwi":"k"\},"timestamp":"[^"]+"\}\z/,
                 payload)
  end

  # README, Errors: "the handler raises | `{type: <exception class name>,
  # message, traceback}`"; Concurrency: SIGINT "never kills the worker". A
  # handler that raises `Interrupt` itself gets a failed reply (the bridge
  # re-raised it once, and the worker died of SIGINT).
  def test_a_handler_raising_interrupt_gets_a_failed_reply
    worker = spawn_worker
    worker.request(1, "raise_interrupt")
    reply = worker.recv
    error = assert_failed(reply, 1, "Interrupt")
    assert_equal "raised by the handler", error["message"]
    assert_ok(worker.call(2, "echo_args"), 2)
  end
end
