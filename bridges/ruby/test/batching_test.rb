# frozen_string_literal: true

require_relative "test_helper"

# Several frames per system call: requests that arrive together are read
# with one read, not two reads per frame.
class BatchingTest < Minitest::Test
  Wire = SnakepitBridge::Wire

  # An input pipe that counts the reads made of it.
  class CountingInput
    attr_reader :reads

    def initialize(io)
      @io = io
      @reads = 0
    end

    def readpartial(*args)
      @reads += 1
      @io.readpartial(*args)
    end

    def read(*args)
      @reads += 1
      @io.read(*args)
    end

    def fileno
      @io.fileno
    end

    def to_io
      @io
    end
  end

  def frames(codec, ids)
    ids.map { |id| Wire.frame(codec.encode({ "id" => id, "command" => "echo", "args" => { "n" => id } })) }.join
  end

  def test_requests_written_together_are_read_together
    codec = Wire.codec("json")
    to_worker_r, to_worker = IO.pipe
    from_worker, from_worker_w = IO.pipe
    input = CountingInput.new(to_worker_r)
    worker = SnakepitBridge::Worker.new(codec: "json", input: input, output: from_worker_w)
    worker.command("echo") { |args| args }
    to_worker.write(frames(codec, [1, 2, 3, 4, 5]))
    to_worker.close
    worker.run
    from_worker_w.close
    replies = []
    while (payload = Wire.read_frame(from_worker))
      replies << codec.decode(payload)
    end
    assert_equal [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5]],
                 replies.reject { |m| m["type"] }.map { |m| [m["id"], m["result"]["n"]] }
    # One read brings the five frames, one more sees the end of the input.
    assert_operator input.reads, :<=, 2, "#{input.reads} reads for five frames"
  end

  def test_the_reader_splits_frames_across_reads_and_skips_oversized_ones
    r, w = IO.pipe
    reader = Wire::FrameReader.new(r, 10)
    w.write(Wire.frame("{}") + Wire.frame("x" * 20) + Wire.frame("[1]")[0, 3])
    assert_equal "{}", reader.read_frame
    error = assert_raises(SnakepitBridge::FrameTooLarge) { reader.read_frame }
    assert_equal 20, error.size
    w.write(Wire.frame("[1]")[3..])
    assert_equal "[1]", reader.read_frame
    w.write("\x00\x00")
    w.close
    error = assert_raises(SnakepitBridge::DecodeError) { reader.read_frame }
    assert_equal :truncated, error.kind
    assert_nil reader.read_frame
  end

  def test_a_whole_frame_in_the_buffer_is_seen_without_select
    r, w = IO.pipe
    reader = Wire::FrameReader.new(r)
    w.write(Wire.frame("{}") + Wire.frame("[]"))
    assert_equal "{}", reader.read_frame
    assert reader.buffered?, "the second frame came with the first"
    assert_equal "[]", reader.read_frame
    refute reader.buffered?
  end
end
