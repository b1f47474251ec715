# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# Protocol strings are UTF-8 (docs/protocol.md section 3). README, Codecs: "A
# result the codec cannot represent ... becomes a failed reply instead of a
# broken frame." A string tagged UTF-8 whose bytes are not ("caf\xff") is
# such a result in both codecs; an error whose message holds one is still
# reported; binary strings go out as bin as before.
class EncodingTest < Minitest::Test
  include ScriptWorkers

  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"
    worker = SnakepitBridge::Worker.new
    BAD = "caf\xff".dup.force_encoding(Encoding::UTF_8)
    worker.command("invalid_result") { |_a, _c| BAD }
    worker.command("invalid_key") { |_a, _c| { "ok" => 1, BAD => 2 } }
    worker.command("invalid_nested") { |_a, _c| { "list" => [1, 2.5, nil, { "deep" => ["x", BAD] }] } }
    worker.command("invalid_ascii") { |_a, _c| "x\xc3".dup.force_encoding(Encoding::US_ASCII) }
    worker.command("invalid_message") { |_a, _c| raise ArgumentError, "cannot read #{BAD}" }
    worker.command("binary_message") { |_a, _c| raise "bytes \xff\xfe".b }
    worker.command("latin1_message") { |_a, _c| raise "caf\u00e9".encode(Encoding::ISO_8859_1) }
    worker.command("binary") { |_a, _c| { "bin" => "\x00\xff".b, "text" => "caf\u00e9" } }
    worker.command("invalid_chunk") do |_a, ctx|
      begin
        ctx.chunk({ "text" => BAD })
        "sent"
      rescue StandardError => e
        ctx.chunk({ "text" => "fine" })
        e.class.name
      end
    end
    worker.command("invalid_host_args") do |_a, ctx|
      begin
        ctx.call_host("echo", { "v" => BAD })
        "called"
      rescue StandardError => e
        e.class.name
      end
    end
    worker.command("pid") { |_a, _c| { "pid" => Process.pid } }
    worker.run
  RUBY

  BAD = "caf\xff".dup.force_encoding(Encoding::UTF_8).freeze

  def msgpack?
    require "msgpack"
    true
  rescue LoadError
    false
  end

  def codecs
    msgpack? ? %w[json msgpack] : %w[json]
  end

  # Every string of a decoded frame, keys included, is valid UTF-8 (or binary).
  def assert_valid_strings(value, where = "frame")
    case value
    when String
      assert value.valid_encoding?, "#{where} holds invalid #{value.encoding}: #{value.inspect}"
      assert_includes [Encoding::UTF_8, Encoding::BINARY], value.encoding, where
    when Hash then value.each { |k, v| assert_valid_strings(k, "#{where} key"); assert_valid_strings(v, "#{where}.#{k}") }
    when Array then value.each_with_index { |v, i| assert_valid_strings(v, "#{where}[#{i}]") }
    end
  end

  def encode_error_type(codec)
    codec == "json" ? "JSON::GeneratorError" : "SnakepitBridge::EncodeError"
  end

  # --- the codec -----------------------------------------------------------

  def test_msgpack_refuses_invalid_strings_anywhere
    skip "the msgpack gem is not installed" unless msgpack?
    codec = SnakepitBridge::Wire.codec("msgpack")
    [
      { "result" => BAD },
      { "result" => { BAD => 1 } },
      { "result" => [1, { "deep" => [BAD] }] },
      { "result" => "x\xc3".dup.force_encoding(Encoding::US_ASCII) },
      { "result" => ("a" * 5000) + BAD }
    ].each do |value|
      error = assert_raises(SnakepitBridge::EncodeError, value.inspect) { codec.encode(value) }
      assert error.message.valid_encoding?, error.message.inspect
    end
  end

  def test_json_refuses_the_same_strings
    codec = SnakepitBridge::Wire.codec("json")
    [{ "result" => BAD }, { "result" => { BAD => 1 } }, { "result" => [1, { "deep" => [BAD] }] }].each do |value|
      assert_raises(JSON::GeneratorError, value.inspect) { codec.encode(value) }
    end
  end

  def test_msgpack_keeps_binary_and_valid_text_as_before
    skip "the msgpack gem is not installed" unless msgpack?
    codec = SnakepitBridge::Wire.codec("msgpack")
    assert_equal "c402ff00", codec.encode("\xff\x00".b).unpack1("H*")
    assert_equal "a3e282ac", codec.encode("\u20ac").unpack1("H*")
    value = { "bin" => "\xff".b, "text" => "caf\u00e9 \u{1F600}", :sym => [1, 2.5, nil, true],
              "latin1" => "\u00e9".encode(Encoding::ISO_8859_1) }
    decoded = codec.decode(codec.encode(value))
    assert_equal({ "bin" => "\xff".b, "text" => "caf\u00e9 \u{1F600}", "sym" => [1, 2.5, nil, true],
                   "latin1" => "\u00e9" }, decoded)
    assert_equal Encoding::BINARY, decoded["bin"].encoding
  end

  # --- a worker --------------------------------------------------------------

  def test_invalid_results_are_failed_replies_and_the_worker_serves_on
    codecs.each do |codec|
      worker = spawn_worker(codec: codec)
      pid = worker.call(1, "pid")["result"]["pid"]
      id = 1
      %w[invalid_result invalid_key invalid_nested invalid_ascii].each do |command|
        reply = worker.call(id += 1, command)
        assert_valid_strings(reply, "#{codec} #{command}")
        assert_equal false, reply["success"], "#{codec} #{command}: #{reply.inspect}"
        assert_equal encode_error_type(codec), reply["error"]["type"], "#{codec} #{command}"
        assert_match(/cannot be encoded as #{codec}/, reply["error"]["message"])
      end
      assert_equal pid, worker.call(id + 1, "pid")["result"]["pid"], "#{codec}: the same worker serves on"
      assert_equal "", worker.drain_stdout(0.1), "#{codec}: nothing else on stdout"
    end
  end

  def test_error_messages_are_made_valid_utf8
    codecs.each do |codec|
      worker = spawn_worker(codec: codec)
      pid = worker.call(10, "pid")["result"]["pid"]
      reply = worker.call(1, "invalid_message")
      assert_valid_strings(reply, codec)
      assert_equal "ArgumentError", reply["error"]["type"], "#{codec}: #{reply.inspect}"
      assert_equal "cannot read caf\u{FFFD}", reply["error"]["message"]
      refute_empty reply["error"]["traceback"]

      reply = worker.call(2, "binary_message")
      assert_valid_strings(reply, codec)
      assert_equal ["RuntimeError", "bytes \u{FFFD}\u{FFFD}"], [reply["error"]["type"], reply["error"]["message"]]

      reply = worker.call(3, "latin1_message")
      assert_equal ["RuntimeError", "caf\u00e9"], [reply["error"]["type"], reply["error"]["message"]]
      assert_equal pid, worker.call(4, "pid")["result"]["pid"], "#{codec}: the same worker serves on"
    end
  end

  def test_an_invalid_chunk_or_host_call_raises_in_the_handler
    codecs.each do |codec|
      worker = spawn_worker(codec: codec)
      worker.request(1, "invalid_chunk", {}, stream: true)
      chunk = worker.recv
      assert_equal({ "type" => "chunk", "id" => 1, "data" => { "text" => "fine" } }, chunk, codec)
      reply = worker.recv
      assert_equal [true, encode_error_type(codec)], [reply["success"], reply["result"]], reply.inspect

      reply = worker.call(2, "invalid_host_args")
      assert_equal [true, encode_error_type(codec)], [reply["success"], reply["result"]], "#{codec}: nothing was sent"
      assert_equal "", worker.drain_stdout(0.1)
    end
  end

  def test_binary_results_still_go_out_as_bin
    skip "the msgpack gem is not installed" unless msgpack?
    worker = spawn_worker(codec: "msgpack")
    result = worker.call(1, "binary")["result"]
    assert_equal({ "bin" => "\x00\xff".b, "text" => "caf\u00e9" }, result)
    assert_equal Encoding::BINARY, result["bin"].encoding
  end
end
