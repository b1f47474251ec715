# frozen_string_literal: true

require_relative "test_helper"

# Outside review, round 6: the pool's frame limit (SNAKEPIT_MAX_FRAME_SIZE,
# docs/protocol.md sections 1 and 5: ResultTooLarge) met exactly and one
# byte over by a chunk and by a host call, in both codecs, and a chunk too
# large for the pool sent while another thread of the handler calls the
# host. Workers run in-process on pipes. Each test names the promise it
# checks; time bounds only turn hangs into failures.
class OutsideRound6Test < Minitest::Test
  Wire = SnakepitBridge::Wire
  MSGPACK = begin
    require "msgpack"
    true
  rescue LoadError
    false
  end
  CODECS = (MSGPACK ? %w[json msgpack] : %w[json]).freeze
  WAIT = 30 # seconds; generous on a loaded 2-core machine

  # The worker's output: a pipe, and a block told of each frame written
  # (under the worker's write lock, before the write returns).
  class Output
    def initialize(io, &on_write)
      @io = io
      @on_write = on_write
    end

    def write(frame)
      n = @io.write(frame)
      @on_write&.call(frame)
      n
    end
  end

  # A worker serving in its own thread, with the limit +limit+, on pipes;
  # +on_write+ sees each frame it writes.
  class InProcess
    attr_reader :worker, :codec

    def initialize(codec, limit, &on_write)
      @codec = Wire.codec(codec)
      @to_r, @to_w = IO.pipe
      @from_r, from_w = IO.pipe
      @from_w = from_w
      before = ENV.fetch("SNAKEPIT_MAX_FRAME_SIZE", nil)
      ENV["SNAKEPIT_MAX_FRAME_SIZE"] = limit.to_s
      begin
        @worker = SnakepitBridge::Worker.new(codec: codec, input: @to_r, output: Output.new(from_w, &on_write))
      ensure
        ENV["SNAKEPIT_MAX_FRAME_SIZE"] = before
      end
      @sizes = []
    end

    attr_reader :sizes

    def start
      @thread = Thread.new do
        @worker.run
      ensure
        @from_w.close
      end
      hello = recv
      raise "no hello: #{hello.inspect}" unless hello["type"] == "hello"
    end

    def send_message(message)
      @to_w.write(Wire.frame(@codec.encode(message)))
    end

    def recv
      raise "no frame within #{WAIT} s" unless IO.select([@from_r], nil, nil, WAIT)

      payload = Wire.read_frame(@from_r, Wire::MAX_FRAME_LIMIT)
      return nil if payload.nil?

      @sizes << payload.bytesize
      @codec.decode(payload)
    end

    # Every frame up to and including the final reply to +id+; host calls
    # are answered with +host_result+ on the way.
    def until_reply(id, host_result: "ok")
      frames = []
      loop do
        frame = recv
        raise "the worker closed its output; frames: #{frames.inspect}" if frame.nil?

        frames << frame
        if frame["type"] == "host_call"
          send_message({ "type" => "host_reply", "id" => frame["id"], "success" => true, "result" => host_result })
        end
        return frames if frame["type"].nil? && frame["id"] == id
      end
    end

    # Closes the worker's input; returns every frame it wrote after that.
    def finish
      @to_w.close
      rest = []
      while (frame = recv)
        rest << frame
      end
      raise "the worker did not stop" unless @thread.join(WAIT)

      rest
    end
  end

  def size_of(codec, value)
    Wire.codec(codec).encode(value).bytesize
  end

  # The length of a string that makes +make.call(n)+ exactly +limit+ bytes.
  def fill(codec, limit)
    n = (0..limit).find { |k| size_of(codec, yield(k)) >= limit }
    assert_equal limit, size_of(codec, yield(n)), "no length fills the limit exactly"
    n
  end

  # README: "A chunk above the pool's frame limit is not sent: the call is
  # answered there with a failed reply of type ResultTooLarge, and chunk
  # returns false". One of exactly the limit is sent; one byte more is not.
  def test_a_chunk_of_exactly_the_limit_is_sent_and_one_byte_more_ends_the_call
    limit = 1000
    CODECS.each do |codec|
      n = fill(codec, limit) { |k| { "type" => "chunk", "id" => 1, "data" => "c" * k } }
      w = InProcess.new(codec, limit)
      gave = []
      w.worker.command("chunk") do |args, ctx|
        gave << ctx.chunk("c" * args.fetch("n"))
        gave << ctx.chunk("after")
        "end"
      end
      w.start
      w.send_message({ "id" => 1, "command" => "chunk", "args" => { "n" => n }, "stream" => true })
      one = w.until_reply(1)
      assert_equal [["chunk", n], ["chunk", 5]], one[0..-2].map { |f| [f["type"], f["data"].bytesize] }, codec
      assert_equal "end", one[-1]["result"]
      w.send_message({ "id" => 2, "command" => "chunk", "args" => { "n" => n + 1 }, "stream" => true })
      two = w.until_reply(2)
      assert_equal 1, two.size, "#{codec}: #{two.inspect}"
      assert_equal "ResultTooLarge", two[0].dig("error", "type")
      assert_equal "the chunk would be #{limit + 1} bytes, above the pool's limit of #{limit}",
                   two[0].dig("error", "message")
      assert_equal [], w.finish
      # The handler has returned once the worker stopped.
      assert_equal [true, true, false, false], gave
      assert_operator w.sizes.max, :<=, limit
      assert_includes w.sizes, limit
    end
  end

  # README: "call_host ... ResultTooLarge, with nothing sent, when the
  # request would be above the pool's frame limit". One of exactly the
  # limit is sent and answered.
  def test_a_host_call_of_exactly_the_limit_is_sent_and_one_byte_more_raises_unsent
    limit = 1000
    CODECS.each do |codec|
      n = fill(codec, limit) do |k|
        { "type" => "host_call", "id" => 1, "request_id" => 1, "function" => "f", "args" => { "k" => "h" * k } }
      end
      w = InProcess.new(codec, limit)
      w.worker.command("host") do |args, ctx|
        ctx.call_host("f", { "k" => "h" * args.fetch("n") })
      rescue SnakepitBridge::HostCallError => e
        { "type" => e.error_type, "message" => e.message }
      end
      w.start
      w.send_message({ "id" => 1, "command" => "host", "args" => { "n" => n } })
      one = w.until_reply(1)
      assert_equal [["host_call", 1], [nil, 1]], one.map { |f| [f["type"], f["request_id"] || f["id"]] }, codec
      assert_equal "ok", one[-1]["result"]
      # The next host call would get id 2: as many digits as 1.
      w.send_message({ "id" => 2, "command" => "host", "args" => { "n" => n + 1 } })
      two = w.until_reply(2)
      assert_equal 1, two.size, "#{codec}: a host_call went out: #{two.inspect}"
      assert_equal({ "type" => "ResultTooLarge",
                     "message" => "the host call f would be #{limit + 1} bytes, above the pool's limit of #{limit}" },
                   two[0]["result"])
      assert_equal [], w.finish
      assert_operator w.sizes.max, :<=, limit
      assert_includes w.sizes, limit
    end
  end

  # bridges.md / README: a chunk above the limit "ends the call with
  # ResultTooLarge at once", and call_host "raises Cancelled once the
  # handler has returned"; the bridge's own rule is that a host call never
  # follows its call's reply (the pool no longer knows the call). The
  # chunk's thread wrote that reply and only then, after letting go of the
  # write lock, marked the call finished: a host call another thread of the
  # handler made in between went out after the reply. Here the chunk's
  # thread is held at that point (as a preemption there would), until the
  # other thread's host call has been dealt with.
  def test_a_host_call_from_another_thread_never_follows_a_too_large_chunks_reply
    limit = 1000
    CODECS.each do |codec|
      written = Queue.new
      w = InProcess.new(codec, limit) { |frame| written << true if frame.include?("ResultTooLarge") }
      outcome = Queue.new
      w.worker.command("race") do |_args, ctx|
        host_done = Queue.new
        ctx.define_singleton_method(:finished=) do |value|
          if value && Thread.current[:round6_chunker]
            deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
            sleep 0.01 while host_done.empty? && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
          end
          super(value)
        end
        chunker = Thread.new do
          Thread.current[:round6_chunker] = true
          outcome << [:chunk, ctx.chunk("y" * (2 * limit))]
        end
        caller = Thread.new do
          written.pop
          begin
            ctx.call_host("session.get", { "key" => "k" })
            outcome << %i[host sent]
          rescue SnakepitBridge::Cancelled, SnakepitBridge::HostCallError => e
            outcome << [:host, e.class.name]
          ensure
            host_done << true
          end
        end
        [chunker, caller].each { |t| t.join(15) }
        "dropped"
      end
      w.start
      w.send_message({ "id" => 1, "command" => "race", "args" => {}, "stream" => true })
      frames = w.until_reply(1)
      assert_equal [[nil, "ResultTooLarge"]], frames.map { |f| [f["type"], f.dig("error", "type")] }, codec
      w.send_message({ "id" => 2, "command" => "ping", "args" => {} })
      after = w.until_reply(2)
      assert_equal [[nil, 2]], after.map { |f| [f["type"], f["id"]] }, "#{codec}: a frame followed the reply"
      assert_equal [], w.finish
      results = 2.times.map { outcome.pop }.sort
      assert_equal [[:chunk, false], [:host, "SnakepitBridge::Cancelled"]], results, codec
    end
  end
  # README, Codecs: "Incoming frames above the same limit are skipped with
  # a ProtocolError". At a limit of the pool's choosing: a request of
  # exactly the limit is served, one a byte longer is skipped whole and
  # answered under id 0, and the request after it is read in step.
  def test_an_incoming_frame_of_exactly_the_limit_is_served_and_one_byte_more_is_skipped_in_step
    limit = 1000
    CODECS.each do |codec|
      n = fill(codec, limit) { |k| { "id" => 1, "command" => "len", "args" => { "s" => "r" * k } } }
      w = InProcess.new(codec, limit)
      w.worker.command("len") { |args, _ctx| args.fetch("s").bytesize }
      w.start
      w.send_message({ "id" => 1, "command" => "len", "args" => { "s" => "r" * n } })
      w.send_message({ "id" => 2, "command" => "len", "args" => { "s" => "r" * (n + 1) } })
      w.send_message({ "id" => 3, "command" => "len", "args" => { "s" => "r" } })
      frames = w.until_reply(3)
      # The worker reads ahead while it runs a call: the ProtocolError (id
      # 0, no call's) may come before the reply to 1.
      replies = frames.reject { |f| f["id"].zero? }
      assert_equal [[1, true], [3, true]], replies.map { |f| [f["id"], f["success"]] }, codec
      assert_equal n, replies[0]["result"]
      skipped = frames.select { |f| f["id"].zero? }
      assert_equal [["ProtocolError", "frame of #{limit + 1} bytes exceeds the maximum of #{limit} bytes"]],
                   skipped.map { |f| [f.dig("error", "type"), f.dig("error", "message")] }
      assert_equal [], w.finish
    end
  end

  # README, Codecs: "A String in UTF-16 or UTF-32 ... goes out as UTF-8
  # without that mark in both codecs"; and under JSON "any other object"
  # (here a map key that is not a String) is written "as its to_s text"
  # (bridges.md). The second pass that drops the marks walked keys too, and
  # a key that is an Array holding itself (to_s text "[[...]]", which the
  # generator writes at once) sent it down without end: the reply failed
  # with SystemStackError wherever the result also held a U+FEFF, a
  # UTF-16 string's mark or a character of UTF-8 text.
  def test_a_self_holding_key_beside_a_byte_order_mark_is_written_as_its_text_under_json
    looped = []
    looped << looped
    w = InProcess.new("json", 100_000)
    w.worker.command("marked") { |_args, _ctx| { looped => 1, "v" => "x".encode("UTF-16"), "z" => "\uFEFFw" } }
    w.worker.command("chunked") do |_args, ctx|
      ctx.chunk({ looped => 2, "v" => "y".encode("UTF-32") })
      "end"
    end
    w.start
    w.send_message({ "id" => 1, "command" => "marked", "args" => {} })
    reply = w.until_reply(1).last
    assert_equal({ "[[...]]" => 1, "v" => "x", "z" => "\uFEFFw" }, reply["result"], reply["error"].inspect)
    w.send_message({ "id" => 2, "command" => "chunked", "args" => {}, "stream" => true })
    frames = w.until_reply(2)
    assert_equal [{ "type" => "chunk", "id" => 2, "data" => { "[[...]]" => 2, "v" => "y" } }], frames[0..-2],
                 frames.last.inspect
    assert_equal "end", frames.last["result"]
    assert_equal [], w.finish
  end

  # README, Codecs: "A result the codec cannot represent (... a string
  # whose bytes are not valid in its encoding ...) becomes a failed reply
  # instead of a broken frame", and its stated limit: under MessagePack a
  # string tagged UTF-16 or UTF-32 whose bytes are not valid there fails
  # its reply; under JSON the generator may write its bytes as they are
  # (text given force_encoding instead of encode), so only MessagePack is
  # held to it.
  def test_msgpack_fails_the_reply_of_a_string_not_valid_in_utf16_or_utf32
    skip "needs the msgpack gem" unless MSGPACK
    codecs = %w[msgpack]
    {
      "hell, force_encoding UTF-16" => "hell".dup.force_encoding("UTF-16"),
      "abc, force_encoding UTF-16LE" => "abc".dup.force_encoding("UTF-16LE"),
      "UTF-32LE above U+10FFFF" => "\x00\x00\x11\x00".dup.force_encoding("UTF-32LE")
    }.each do |name, text|
      refute text.valid_encoding?, name
      codecs.each do |codec|
        w = InProcess.new(codec, 10_000)
        w.worker.command("text") { |_args, _ctx| { "v" => text } }
        w.start
        w.send_message({ "id" => 1, "command" => "text", "args" => {} })
        reply = w.until_reply(1).last
        assert_equal false, reply["success"], "#{codec}, #{name}: sent #{reply['result'].inspect}"
        w.finish
      end
    end
  end
end
