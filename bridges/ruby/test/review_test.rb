# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# Frames the pool may send that all three bridges must handle alike: wrong
# `args` and MessagePack ext values (real worker processes, driven over
# pipes).
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
  # means {}. The test checks that `"args": false` gets InvalidRequest under
  # id 5. This bridge once ran the command with {}.
  def test_args_false_is_an_invalid_request
    worker = spawn_worker
    worker.send_message({ "id" => 5, "command" => "echo", "args" => false })
    reply = worker.recv
    assert_equal 5, reply["id"], reply.inspect
    assert_equal false, reply["success"], reply.inspect
    assert_equal "InvalidRequest", reply["error"]["type"], reply.inspect
  end

  # The same promise for other wrong types of `args`: 0, "x" and true each
  # get InvalidRequest under their own id.
  def test_args_of_other_wrong_types_are_invalid_requests
    worker = spawn_worker
    [0, "x", true].each_with_index do |args, i|
      worker.send_message({ "id" => 20 + i, "command" => "echo", "args" => args })
      reply = worker.recv
      assert_equal 20 + i, reply["id"], reply.inspect
      assert_equal "InvalidRequest", reply.dig("error", "type"), reply.inspect
    end
  end

  # docs/protocol.md section 3: "MessagePack `ext` values reach handlers as
  # the library's own type and are written back as the same `ext`"
  # (`MessagePack::ExtensionValue` in Ruby). The test checks that request 6
  # gets a successful reply under its own id and the worker serves the next
  # call. The decoder once raised MessagePack::UnknownExtTypeError and
  # answered "frame is not valid MessagePack" under id 0.
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
  # argument fails only its own call, and the worker is not blamed. The
  # bundled bridges read and write up to that limit in both codecs." Under
  # MessagePack, the test checks that a result nested 100,000 deep gets a
  # failed reply and the worker serves the next call. Such a result once
  # overflowed the stack and ended the worker with no reply.
  def test_a_result_too_deep_for_msgpack_is_a_failed_reply_and_the_worker_lives_on
    worker = spawn_worker(codec: "msgpack")
    reply = worker.call(1, "deep", { "n" => 100_000 })
    assert_equal false, reply["success"], reply.inspect
    assert_equal 2, worker.call(2, "ping")["id"]
    assert worker.alive?, "the worker died: #{worker.stderr[-400..]}"
  end

  # The same promise under JSON: the same result gets a failed reply and the
  # worker serves the next call.
  def test_a_result_too_deep_for_json_is_a_failed_reply_and_the_worker_lives_on
    worker = spawn_worker(codec: "json")
    reply = worker.call(1, "deep", { "n" => 100_000 })
    assert_equal false, reply["success"], reply.inspect
    assert_equal 2, worker.call(2, "ping")["id"]
  end
end
