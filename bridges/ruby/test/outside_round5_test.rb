# frozen_string_literal: true

require_relative "test_helper"
require_relative "preload_test" # TemplateProcess, ForkedWorker

# Outside review, round 5: test/round5_worker.rb driven over real pipes
# against the pool's frame limit (SNAKEPIT_MAX_FRAME_SIZE, docs/protocol.md
# sections 1 and 5: ResultTooLarge), in spawned and preloaded workers, and
# text whose encoding starts with a byte order mark. Each test names the
# promise it checks. Time bounds only turn hangs into failures.
class OutsideRound5Test < Minitest::Test
  WORKER = File.join(__dir__, "round5_worker.rb")
  LIMIT = 2000
  MSGPACK = begin
    require "msgpack"
    true
  rescue LoadError
    false
  end
  CODECS = (MSGPACK ? %w[json msgpack] : %w[json]).freeze
  TOO_LARGE = /\Athe result would be (\d+) bytes, above the pool's limit of (\d+)\z/.freeze

  def setup
    @workers = []
    @templates = []
  end

  def teardown
    @workers.each(&:stop)
    @templates.each(&:stop)
  end

  def spawn(codec, limit: LIMIT.to_s)
    WorkerProcess.new(WORKER, codec: codec, env: { "SNAKEPIT_MAX_FRAME_SIZE" => limit }).tap { |w| @workers << w }
  end

  # The final reply to request +id+, with every frame the worker wrote on
  # the way (chunks); each frame's payload is checked against +limit+, as
  # the pool checks it.
  def call_checked(worker, id, command, args, limit: LIMIT, **extra)
    worker.request(id, command, args, **extra)
    frames = []
    loop do
      payload = worker.instance_variable_get(:@from_worker).then do |io|
        raise "no frame within 30 s; stderr:\n#{worker.stderr}" unless IO.select([io], nil, nil, 30)

        SnakepitBridge::Wire.read_frame(io, SnakepitBridge::Wire::MAX_FRAME_LIMIT)
      end
      raise "worker closed stdout; stderr:\n#{worker.stderr}" if payload.nil?

      assert_operator payload.bytesize, :<=, limit, "a frame the pool would refuse"
      message = SnakepitBridge::Wire.codec(worker_codec(worker)).decode(payload)
      frames << message
      return [message, frames] if message["type"].nil? && message["id"] == id
    end
  end

  def worker_codec(worker)
    worker.instance_variable_get(:@codec).name
  end

  def size_of(codec, value)
    SnakepitBridge::Wire.codec(codec).encode(value).bytesize
  end

  def assert_serving(worker, id)
    reply, = call_checked(worker, id, "echo", { "still" => "here" })
    assert_equal({ "still" => "here" }, reply["result"], worker.stderr[-600..])
  end

  # protocol.md section 1: SNAKEPIT_MAX_FRAME_SIZE, decimal bytes, absent
  # means 67108864. A value the bridge cannot use falls back to that.
  def test_the_frame_limit_comes_from_snakepit_max_frame_size_and_a_bad_value_gives_64_mib
    limit = ->(value) { SnakepitBridge::Wire.frame_limit(value.nil? ? {} : { "SNAKEPIT_MAX_FRAME_SIZE" => value }) }
    assert_equal 67_108_864, limit.call(nil)
    assert_equal 123_456, limit.call("123456")
    assert_equal 1, limit.call("1")
    ["", "0", "-5", "abc", "1e6", " 100", "100 ", "12.5", "0x10", "+7", "100\n", "١٢٣"].each do |bad|
      assert_equal 67_108_864, limit.call(bad), bad.inspect
    end
    assert_equal 0xffff_ffff, limit.call("99999999999999999999")
    CODECS.each do |codec|
      w = spawn(codec)
      assert_equal LIMIT, call_checked(w, 1, "limit", {})[0]["result"]
      w = spawn(codec, limit: "lots")
      assert_equal 67_108_864, call_checked(w, 1, "limit", {})[0]["result"]
      reply, = call_checked(w, 2, "big", { "n" => 3 * LIMIT }, limit: 67_108_864)
      assert_equal 3 * LIMIT, reply["result"].bytesize
    end
  end

  # protocol.md section 5, ResultTooLarge: "the bundled bridges send this
  # failed reply instead, and the worker stays". A reply of exactly the
  # limit goes out as it is; the Ruby bridge's replies carry a timestamp,
  # so the size is found by trying.
  def test_a_result_above_the_limit_is_a_result_too_large_reply_and_the_worker_serves_on
    CODECS.each do |codec|
      w = spawn(codec)
      stamp = "2026-11-27T12:24:04.051023Z"
      fits = (LIMIT - 120..LIMIT).find do |n|
        size_of(codec, { "id" => 2, "success" => true, "result" => "x" * n, "timestamp" => stamp }) == LIMIT
      end
      exact, = call_checked(w, 2, "big", { "n" => fits })
      assert_equal [true, fits], [exact["success"], exact["result"].bytesize], codec
      over, = call_checked(w, 3, "big", { "n" => fits + 1 })
      assert_equal [false, "ResultTooLarge"], [over["success"], over.dig("error", "type")], codec
      size, limit = TOO_LARGE.match(over.dig("error", "message")).captures.map(&:to_i)
      assert_equal [LIMIT + 1, LIMIT], [size, limit]
      huge, = call_checked(w, 4, "big", { "n" => 5 * 1024 * 1024 })
      assert_equal "ResultTooLarge", huge.dig("error", "type")
      # A failed reply too: the exception's message is the handler's.
      failed, = call_checked(w, 5, "fail", { "n" => 3 * LIMIT })
      assert_equal "ResultTooLarge", failed.dig("error", "type")
      assert_match TOO_LARGE, failed.dig("error", "message")
      # The unknown command's reply quotes the command: larger than the
      # request that fitted.
      long = "c" * (LIMIT - 120..LIMIT).select do |n|
        size_of(codec, { "id" => 6, "command" => "c" * n, "args" => {}, "timestamp" => stamp }) <= LIMIT
      end.max
      unknown, = call_checked(w, 6, long, {})
      assert_equal "ResultTooLarge", unknown.dig("error", "type")
      assert_serving(w, 7)
    end
  end

  # "A chunk that large ends its stream with this error": one final reply,
  # the handler's return value dropped, later chunks not sent.
  def test_a_chunk_above_the_limit_ends_the_stream_with_result_too_large_and_nothing_follows
    CODECS.each do |codec|
      w = spawn(codec)
      reply, frames = call_checked(w, 1, "chunks", { "n" => 3 * LIMIT }, stream: true)
      assert_equal [{ "type" => "chunk", "id" => 1, "data" => "small" }], frames[0..-2], codec
      assert_equal "ResultTooLarge", reply.dig("error", "type")
      assert_match(/\Athe chunk would be \d+ bytes, above the pool's limit of 2000\z/, reply.dig("error", "message"))
      # The worker answers the next call; nothing more came for request 1.
      next_reply, between = call_checked(w, 2, "echo", { "a" => 1 })
      assert_equal [next_reply], between
      assert_includes w.stderr_until("round5: chunk gave"), "round5: chunk gave true false false"
      # The call is over for the pool: a host call after such a chunk
      # raises Cancelled, as once the handler has returned, and is not sent.
      ended, frames = call_checked(w, 3, "chunk_then_host", { "n" => 3 * LIMIT }, stream: true)
      assert_equal [ended], frames, "a host_call or chunk went out"
      assert_equal "ResultTooLarge", ended.dig("error", "type")
      assert_serving(w, 4)
      assert_includes w.stderr_until("round5: host call after the chunk"),
                      "round5: host call after the chunk raised SnakepitBridge::Cancelled: " \
                      "request 3 is already finished"
    end
  end

  # "a host call whose arguments are that large fails inside the handler
  # without being sent".
  def test_a_host_call_above_the_limit_raises_in_the_handler_and_sends_nothing
    CODECS.each do |codec|
      w = spawn(codec)
      caught, frames = call_checked(w, 1, "host", { "n" => 3 * LIMIT })
      assert_equal [caught], frames, "a host_call frame went out"
      result = caught["result"]
      assert_equal ["SnakepitBridge::HostCallError", "ResultTooLarge"], [result["class"], result["type"]], codec
      assert_match(/\Athe host call session\.get would be \d+ bytes, above the pool's limit of 2000\z/,
                   result["message"])
      uncaught, frames = call_checked(w, 2, "host_uncaught", { "n" => 3 * LIMIT })
      assert_equal [uncaught], frames
      assert_equal "SnakepitBridge::HostCallError", uncaught.dig("error", "type")
      # A small one still goes out.
      w.request(3, "host", { "n" => 3 })
      call = w.recv(30)
      assert_equal ["host_call", "kkk"], [call["type"], call.dig("args", "key")]
      w.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true, "result" => nil })
      assert_equal "sent", w.recv(30)["result"]
    end
  end

  # The feature in a preloaded worker: the limit is read in the forked
  # worker, from the environment of its fork request, not in the template.
  def test_a_forked_worker_reads_the_limit_of_its_fork_request
    template = TemplateProcess.new(env: { "SNAKEPIT_MAX_FRAME_SIZE" => nil }).tap { |t| @templates << t }
    limited = ForkedWorker.new(template, 1, env: { "SNAKEPIT_MAX_FRAME_SIZE" => "300" }).tap { |w| @workers << w }
    free = ForkedWorker.new(template, 2).tap { |w| @workers << w }
    [limited, free].each(&:receive_hello)
    # An echo whose request fits in 300 bytes and whose reply does not.
    text = "t" * 200
    request = { "id" => 1, "command" => "echo", "args" => { "s" => text }, "timestamp" => "2026-11-27T12:24:04.051023Z" }
    assert_operator size_of("json", request), :<=, 300
    small = limited.call(1, "echo", { "s" => text })
    assert_equal "ResultTooLarge", small.dig("error", "type"), small.inspect
    assert_match(/above the pool's limit of 300\z/, small.dig("error", "message"))
    assert_equal "ok", limited.call(2, "ping", {})["result"]["status"]
    assert_equal({ "s" => text }, free.call(1, "echo", { "s" => text })["result"]["echoed"])
  end

  # Known leftover of round 4: a UTF-16 or UTF-32 string (Ruby's dummy
  # encodings, which start with a byte order mark) went out with the mark
  # as U+FEFF under JSON, and without it under MessagePack. Both now drop
  # it, as String#encode does; a U+FEFF that is a character of the text
  # (in UTF-16LE, which has no mark) stays in both.
  def test_a_byte_order_mark_is_dropped_alike_by_both_codecs
    want = {
      "utf16" => "日本", "utf32" => "日本", "日本" => "as a key", "list" => %w[a b], "zwnbsp" => "\uFEFFword"
    }
    CODECS.each do |codec|
      w = spawn(codec)
      reply, = call_checked(w, 1, "marked", {})
      assert_equal want, reply["result"], codec
    end
    codec = SnakepitBridge::Wire.codec("json")
    assert_equal '{"a":"日本"}', codec.encode({ "a" => "日本".encode("UTF-16") })
  end
end
