# frozen_string_literal: true

require_relative "test_helper"
require "json"
require "stringio"
require "tmpdir"

# Checks the framing and both codecs against tests/vectors/frames.json.
class WireTest < Minitest::Test
  Wire = SnakepitBridge::Wire
  DATA = JSON.parse(File.read(TestPaths::VECTORS))
  CASES = DATA.fetch("cases")

  # {"$bin": hex} in a vector stands for a binary (ASCII-8BIT) string.
  def self.expected(value)
    case value
    when Hash
      return [value["$bin"]].pack("H*") if value.size == 1 && value.key?("$bin")

      value.to_h { |k, v| [k, expected(v)] }
    when Array then value.map { |v| expected(v) }
    else value
    end
  end

  def frame_bytes(test_case)
    [test_case.fetch("frame_hex")].pack("H*")
  end

  def decode(test_case)
    io = StringIO.new(frame_bytes(test_case))
    payload = Wire.read_frame(io, DATA.fetch("max_frame_size"))
    message = Wire.codec(test_case["codec"]).decode(payload)
    Wire.validate(message, test_case.fetch("direction"))
  end

  def test_vectors_are_present
    assert_operator CASES.count { |c| c.key?("value") }, :>, 20
    assert_operator CASES.count { |c| c.key?("error") }, :>, 5
  end

  CASES.select { |c| c.key?("value") }.each do |test_case|
    define_method("test_decode_#{test_case['name']}") do
      decoded = decode(test_case)
      expected = self.class.expected(test_case["value"])
      assert_equal expected, decoded
      assert_equal expected.keys, decoded.keys, "key order is kept"
    end

    next unless test_case["encode"] && test_case["direction"] == "to_pool"

    define_method("test_encode_#{test_case['name']}") do
      payload = Wire.codec(test_case["codec"]).encode(self.class.expected(test_case["value"]))
      assert_equal test_case["frame_hex"], Wire.frame(payload).unpack1("H*")
    end
  end

  CASES.select { |c| c.key?("error") }.each do |test_case|
    define_method("test_reject_#{test_case['name']}") do
      error = assert_raises(SnakepitBridge::DecodeError) { decode(test_case) }
      assert_equal test_case["error"], error.kind.to_s, error.message
    end
  end

  def test_read_frame_returns_nil_on_clean_eof
    assert_nil Wire.read_frame(StringIO.new(+""))
  end

  def test_reads_consecutive_frames_exactly
    io = StringIO.new(Wire.frame("{}") + Wire.frame("[1]") + Wire.frame(""))
    assert_equal "{}", Wire.read_frame(io)
    assert_equal "[1]", Wire.read_frame(io)
    assert_equal "", Wire.read_frame(io)
    assert_nil Wire.read_frame(io)
  end

  def test_too_large_frame_reports_size_and_can_be_skipped
    io = StringIO.new([100].pack("N") + ("x" * 100) + Wire.frame("{}"))
    error = assert_raises(SnakepitBridge::FrameTooLarge) { Wire.read_frame(io, 10) }
    assert_equal 100, error.size
    assert Wire.skip(io, error.size)
    assert_equal "{}", Wire.read_frame(io, 10)
  end

  def test_json_is_compact_and_keeps_utf8
    payload = Wire.codec("json").encode({ "b" => "h\u00e9llo \u2713", "a" => [1, 2.5, nil, true] })
    assert_equal "{\"b\":\"h\u00e9llo \u2713\",\"a\":[1,2.5,null,true]}", payload
  end

  def test_json_encoder_recovers_after_a_failure
    codec = Wire.codec("json")
    150.times { assert_raises(JSON::GeneratorError) { codec.encode({ "a" => { "b" => [Float::NAN] } }) } }
    assert_equal '{"a":{"b":[1]}}', codec.encode({ "a" => { "b" => [1] } })
  end

  def test_json_symbol_keys_become_strings
    assert_equal '{"ok":1}', Wire.codec("json").encode({ ok: 1 })
  end

  def test_msgpack_packs_str_and_bin
    codec = Wire.codec("msgpack")
    assert_equal "a2c3a9", codec.encode("\u00e9").unpack1("H*")
    assert_equal "c401ff", codec.encode("\xff".b).unpack1("H*")
    assert_equal "a36f6b21", codec.encode("ok!").unpack1("H*")
    assert_equal "cb4004000000000000", codec.encode(2.5).unpack1("H*")
    decoded = codec.decode(codec.encode({ "bin" => "\x00\xff".b, "str" => "\u00e9" }))
    assert_equal Encoding::BINARY, decoded["bin"].encoding
    assert_equal Encoding::UTF_8, decoded["str"].encoding
  end

  def test_codec_comes_from_env_or_argument
    old = ENV["SNAKEPIT_CODEC"]
    ENV["SNAKEPIT_CODEC"] = "msgpack"
    assert_equal "msgpack", Wire.codec.name
    assert_equal "json", Wire.codec("json").name
    ENV.delete("SNAKEPIT_CODEC")
    assert_equal "json", Wire.codec.name
    assert_raises(ArgumentError) { Wire.codec("xml") }
  ensure
    ENV["SNAKEPIT_CODEC"] = old
  end

  def test_missing_msgpack_gem_names_the_package
    Dir.mktmpdir do |dir|
      # A msgpack.rb earlier on the load path stands in for a missing gem.
      File.write(File.join(dir, "msgpack.rb"), "raise LoadError, 'cannot load such file -- msgpack'\n")
      out = IO.popen([RbConfig.ruby, "-I", dir, "-I", File.join(TestPaths::BRIDGE_DIR, "lib"), "-e",
                      'require "snakepit_bridge"; begin; SnakepitBridge::Wire.codec("msgpack"); ' \
                      'rescue SnakepitBridge::CodecUnavailable => e; puts e.message; end'], &:read)
      assert_includes out, "apt-get install ruby-msgpack"
      assert_includes out, "gem install msgpack"
    end
  end
end
