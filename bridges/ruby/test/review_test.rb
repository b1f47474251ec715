# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# Review: frames the pool may send that this bridge handles unlike the
# Python and Node.js bridges (real worker processes, driven over pipes).
class ReviewTest < Minitest::Test
  def setup
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
  end

  def spawn_worker(codec: "json")
    WorkerProcess.new(TestPaths::GENERIC_WORKER, codec: codec).tap { |w| @workers << w }
  end

  def msgpack?
    require "msgpack"
    true
  rescue LoadError
    false
  end

  # docs/protocol.md section 4: "A request missing a field or with a wrong
  # type (... `args` that are not a map): a failed reply of type
  # InvalidRequest under the request's id". Only a missing (or null) `args`
  # means {}. The Python and Node.js bridges answer `"args": false` with
  # InvalidRequest; this one runs the command with {}.
  def test_args_false_is_an_invalid_request
    worker = spawn_worker
    worker.send_message({ "id" => 5, "command" => "echo", "args" => false })
    reply = worker.recv
    assert_equal 5, reply["id"], reply.inspect
    assert_equal false, reply["success"], reply.inspect
    assert_equal "InvalidRequest", reply["error"]["type"], reply.inspect
  end

  # Other wrong types of `args` already fail; `false` must fail the same way.
  def test_args_of_other_wrong_types_are_invalid_requests
    worker = spawn_worker
    [0, "x", true].each_with_index do |args, i|
      worker.send_message({ "id" => 20 + i, "command" => "echo", "args" => args })
      reply = worker.recv
      assert_equal 20 + i, reply["id"], reply.inspect
      assert_equal "InvalidRequest", reply.dig("error", "type"), reply.inspect
    end
  end

  # docs/protocol.md section 4: only a payload that does not decode is a
  # ProtocolError with id 0 (after which the pool replaces the worker). A
  # MessagePack ext value is valid MessagePack: the Python and Node.js
  # bridges serve the request and echo the value back; this bridge's
  # decoder raises MessagePack::UnknownExtTypeError, answers
  # "frame is not valid MessagePack" under id 0, and request 6 never gets
  # a reply of its own.
  def test_an_ext_value_in_the_args_is_answered_under_the_request_id
    skip "needs the msgpack gem" unless msgpack?
    worker = spawn_worker(codec: "msgpack")
    payload = MessagePack.pack({ "id" => 6, "command" => "echo",
                                 "args" => { "x" => MessagePack::ExtensionValue.new(5, "ab".b) } })
    worker.send_raw(SnakepitBridge::Wire.frame(payload))
    reply = worker.recv
    assert_equal 6, reply["id"], reply.inspect
    assert_equal true, reply["success"], reply.inspect
    assert_equal 7, worker.call(7, "ping")["id"]
  end
end

# A handler whose result nests deeper than any codec takes.
class ReviewDeepResultTest < Minitest::Test
  include ScriptWorkers

  SCRIPT = <<~RUBY
    require "snakepit_bridge"
    worker = SnakepitBridge::Worker.new
    worker.command("deep") do |args, _ctx|
      value = 1
      args.fetch("n").times { value = [value] }
      value
    end
    worker.run
  RUBY

  # docs/protocol.md section 2: "a deeper reply, chunk or host-call
  # argument fails only its own call, and the worker is not blamed"; the
  # Ruby README: "An exception becomes a failed reply". Under JSON this
  # bridge answers JSON::NestingError, and the Python and Node.js bridges
  # answer such a result with a failed reply in both codecs. Under
  # MessagePack, Wire::MsgpackCodec#check_encodable walks the result by
  # recursion with no depth limit: a SystemStackError, which
  # Worker#write_reply does not rescue (StandardError only), ends the
  # worker with status 1 and the call gets no reply.
  def test_a_result_too_deep_for_msgpack_is_a_failed_reply_and_the_worker_lives_on
    worker = spawn_worker(codec: "msgpack")
    reply = worker.call(1, "deep", { "n" => 100_000 })
    assert_equal false, reply["success"], reply.inspect
    assert_equal 2, worker.call(2, "ping")["id"]
    assert worker.alive?, "the worker died: #{worker.stderr[-400..]}"
  end

  # The same result under JSON is already a failed reply (kept as the
  # reference behaviour the msgpack case should match).
  def test_a_result_too_deep_for_json_is_a_failed_reply_and_the_worker_lives_on
    worker = spawn_worker(codec: "json")
    reply = worker.call(1, "deep", { "n" => 100_000 })
    assert_equal false, reply["success"], reply.inspect
    assert_equal 2, worker.call(2, "ping")["id"]
  end
end
