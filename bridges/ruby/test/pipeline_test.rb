# frozen_string_literal: true

require_relative "test_helper"
require "tmpdir"

# Requests written ahead (the capability `pipeline`): the worker runs one at
# a time, the ones behind it wait, and a cancel frame for a request that has
# not started answers it Cancelled without running it. Every test runs once
# per codec (see the subclasses at the bottom).
module PipelineTests
  include CodecFrames

  WORKER = File.join(__dir__, "pipeline_worker.rb")

  def setup
    @workers = []
    @dir = Dir.mktmpdir("snakepit-pipeline")
  end

  def teardown
    @workers.each(&:stop)
    FileUtils.remove_entry(@dir)
  end

  def spawn_worker
    WorkerProcess.new(WORKER, codec: codec).tap { |w| @workers << w }
  end

  # A FIFO for a `gate` request to wait on.
  def fifo
    path = File.join(@dir, "gate-#{@workers.size}")
    File.mkfifo(path)
    path
  end

  def open_gate(path, text = "open")
    File.write(path, text) # blocks until the handler opens its end
  end

  def expect_started(worker, id)
    chunk = worker.recv
    assert_equal({ "type" => "chunk", "id" => id, "data" => "started" }, chunk.slice("type", "id", "data"))
  end


  def assert_cancelled_before_start(reply, id)
    assert_equal id, reply["id"]
    assert_equal false, reply["success"], reply.inspect
    assert_equal({ "type" => "Cancelled", "message" => "request #{id} was cancelled before it started" },
                 reply["error"])
  end

  def ran(worker, id)
    reply = worker.call(id, "ran")
    assert_equal true, reply["success"], reply.inspect
    reply["result"]
  end

  def test_hello_declares_pipeline_and_sigint_not_cancel
    caps = spawn_worker.hello["capabilities"]
    assert_equal true, caps["pipeline"], caps.inspect
    assert_equal true, caps["sigint"], caps.inspect
    assert_equal false, caps["cancel"], caps.inspect
    assert_equal 1, caps["max_concurrency"], caps.inspect
  end

  def test_a_cancel_arriving_while_the_request_before_runs_drops_the_waiting_one
    worker = spawn_worker
    gate = fifo
    # Written together: 2 waits while 1 runs.
    worker.send_raw(request(1, "gate", { "fifo" => gate }) + request(2, "shout", { "text" => "never" }))
    expect_started(worker, 1)
    worker.send_raw(cancel(2))
    open_gate(gate)
    first, second = replies(worker, 2)
    assert_equal [1, true, "open"], [first["id"], first["success"], first["result"]], first.inspect
    assert_cancelled_before_start(second, 2)
    assert_equal [1], ran(worker, 3)
  end

  def test_requests_and_cancels_read_together_keep_their_order
    worker = spawn_worker
    # One write, so one read: 2 is cancelled while it waits; the cancel of
    # 4 comes before 4 itself, so 4 runs; 9 waits nowhere.
    worker.send_raw([
      request(1, "shout", { "text" => "one" }),
      request(2, "shout", { "text" => "two" }),
      request(3, "shout", { "text" => "three" }),
      cancel(2),
      cancel(4),
      request(4, "shout", { "text" => "four" }),
      cancel(9),
      request(5, "shout", { "text" => "five" })
    ].join)
    got = replies(worker, 5)
    assert_cancelled_before_start(got.find { |m| m["id"] == 2 }, 2)
    done = got.reject { |m| m["id"] == 2 }
    assert_equal [[1, "ONE"], [3, "THREE"], [4, "FOUR"], [5, "FIVE"]],
                 done.map { |m| [m["id"], m["result"]] }, got.inspect
    assert_equal [1, 3, 4, 5], ran(worker, 6)
    assert_equal "SIX", worker.call(7, "shout", { "text" => "six" })["result"]
  end

  def test_calls_written_one_by_one_while_one_runs_run_in_order
    worker = spawn_worker
    gate = fifo
    worker.send_raw(request(1, "gate", { "fifo" => gate }))
    expect_started(worker, 1)
    # Separate writes: they reach the worker's stdin as separate frames.
    (2..6).each { |id| worker.send_raw(request(id, "shout", { "text" => "n#{id}" })) }
    worker.send_raw(cancel(4))
    open_gate(gate)
    got = replies(worker, 6)
    assert_cancelled_before_start(got.find { |m| m["id"] == 4 }, 4)
    assert_equal [[1, "open"], [2, "N2"], [3, "N3"], [5, "N5"], [6, "N6"]],
                 got.reject { |m| m["id"] == 4 }.map { |m| [m["id"], m["result"]] }
  end

  def test_a_cancel_during_a_host_call_drops_the_waiting_request
    worker = spawn_worker
    worker.request(1, "host", { "function" => "slow.thing" })
    call = worker.recv
    assert_equal "host_call", call["type"], call.inspect
    # Written ahead while the host call waits for its reply: the worker
    # reads them before the reply, so during the host call.
    worker.send_raw(request(2, "shout", { "text" => "never" }) + request(3, "shout", { "text" => "three" }))
    worker.send_raw(cancel(2))
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true, "result" => 42 })
    got = replies(worker, 3)
    assert_cancelled_before_start(got.find { |m| m["id"] == 2 }, 2)
    assert_equal [[1, 42], [3, "THREE"]], got.reject { |m| m["id"] == 2 }.map { |m| [m["id"], m["result"]] }
    assert_equal [1, 3], ran(worker, 4)
  end

  def test_a_cancel_during_a_host_call_for_a_request_behind_its_cancel_does_nothing
    worker = spawn_worker
    worker.request(1, "host")
    call = worker.recv
    assert_equal "host_call", call["type"], call.inspect
    worker.send_raw(cancel(2) + request(2, "shout", { "text" => "two" }))
    worker.send_message({ "type" => "host_reply", "id" => call["id"], "success" => true, "result" => 1 })
    assert_equal [[1, 1], [2, "TWO"]], replies(worker, 2).map { |m| [m["id"], m["result"]] }
  end

  def test_sigint_cancels_the_running_call_and_the_waiting_one_still_runs
    worker = spawn_worker
    worker.send_raw(request(1, "sleep") + request(2, "shout", { "text" => "after" }))
    expect_started(worker, 1)
    worker.signal("INT")
    first, second = replies(worker, 2)
    assert_equal [1, false, "Cancelled"], [first["id"], first["success"], first.dig("error", "type")]
    assert_equal "request 1 was cancelled", first["error"]["message"]
    assert_equal [2, true, "AFTER"], [second["id"], second["success"], second["result"]]
    assert_equal [1, 2], ran(worker, 3)
  end

  # SIGINT lands only in a running handler: never in the reading ahead
  # between calls, whatever it interrupts there.
  def test_a_sigint_storm_with_calls_written_ahead_answers_each_call_once_in_order
    worker = spawn_worker
    ids = (1..200).to_a
    got = worker.during_sigint_storm do
      ids.each_slice(10) do |slice|
        worker.send_raw(slice.map do |id|
          id.even? ? request(id, "shout", { "text" => "x" }) : request(id, "sleep", { "seconds" => 0.002 })
        end.join)
      end
      replies(worker, ids.size)
    end
    assert_equal ids, got.map { |m| m["id"] }
    outcomes = got.map { |m| m["success"] ? :ok : m.dig("error", "type") }
    assert_empty(outcomes.reject { |o| [:ok, "Cancelled"].include?(o) })
    assert_equal "SIX", worker.call(1000, "shout", { "text" => "six" })["result"]
  end

  # A request read while a host call waits is queued whole even when SIGINT
  # cancels that handler at the same moment: none is lost.
  def test_a_sigint_storm_during_host_calls_loses_no_request_written_ahead
    worker = spawn_worker
    last = 300
    answered = []
    worker.during_sigint_storm(every: 0.0002) do
      worker.send_raw(request(1, "host"))
      next_id = 2
      while answered.size < last
        message = worker.recv
        if message["type"] == "host_call"
          # The next request, written ahead while this host call waits.
          if next_id <= last
            worker.send_raw(request(next_id, "host"))
            next_id += 1
          end
          worker.send_message({ "type" => "host_reply", "id" => message["id"], "success" => true, "result" => 1 })
        elsif message["type"].nil?
          answered << message["id"]
          # A cancelled handler may not have reached its host call.
          if next_id <= last && answered.size == next_id - 1
            worker.send_raw(request(next_id, "host"))
            next_id += 1
          end
        end
      end
    end
    assert_equal (1..last).to_a, answered
  end
end

class PipelineJsonTest < Minitest::Test
  include PipelineTests

  def codec
    "json"
  end
end

class PipelineMsgpackTest < Minitest::Test
  include PipelineTests

  def codec
    "msgpack"
  end
end

# What reading ahead costs the worker (nothing when calls come one at a
# time; one look into stdin per call that was written ahead), and reading
# ahead from an input that is not a pipe. The worker runs in this process.
class PipelineInProcessTest < Minitest::Test
  Wire = SnakepitBridge::Wire

  # An input that counts the reads that returned (the worker waits in the
  # next one meanwhile).
  class CountingInput
    attr_reader :reads

    def initialize(io)
      @io = io
      @reads = 0
    end

    def readpartial(*args)
      @io.readpartial(*args).tap { @reads += 1 }
    end

    def fileno
      @io.fileno
    end

    def stat
      @io.stat
    end

    def to_io
      @io
    end
  end

  # Counts the worker's looks into a CountingInput without waiting: a
  # non-blocking read of the pipe's second description (/proc/self/fd/N),
  # or IO.select for an input that is not a pipe.
  module Looks
    @counts = Hash.new(0)
    @lock = Mutex.new

    class << self
      # Keyed by the pipe or socket itself (its inode), not by a descriptor
      # number: numbers are reused, and workers of other tests in this
      # process look into their own pipes through the same File methods.
      def count(input)
        @lock.synchronize { @counts[key(input)] }
      end

      def key(io)
        stat = io.stat
        [stat.dev, stat.ino]
      end

      def note(key)
        @lock.synchronize { @counts[key] += 1 }
      end
    end

    # Prepended to IO's singleton class.
    module Select
      def select(readers, *rest)
        readers&.each { |io| Looks.note(Looks.key(io)) if io.is_a?(CountingInput) }
        super
      end
    end

    # Prepended to File.
    module ReadNonblock
      def read_nonblock(*args, **options)
        Looks.note(Looks.key(self)) if path&.start_with?("/proc/self/fd/")
        super
      end
    end
  end
  IO.singleton_class.prepend(Looks::Select)
  File.prepend(Looks::ReadNonblock)

  def setup
    @codec = Wire.codec("json")
    @started = Queue.new
    @gate = Queue.new
  end

  def teardown
    @to_worker&.close unless @to_worker&.closed?
    @thread&.join
  end

  # Starts a worker reading +input+ (the read end of +to_worker+).
  def start(input, to_worker)
    @to_worker = to_worker
    @input = CountingInput.new(input)
    @from_worker, out_w = IO.pipe
    worker = SnakepitBridge::Worker.new(codec: "json", input: @input, output: out_w)
    worker.command("echo") { |args| args }
    worker.command("gate") do |_args, _ctx|
      @started << true
      @gate.pop
    end
    @thread = Thread.new do
      worker.run
      out_w.close
    end
    assert_equal "hello", recv["type"]
  end

  def frame(message)
    Wire.frame(@codec.encode(message))
  end

  def echo(id)
    frame({ "id" => id, "command" => "echo", "args" => { "n" => id } })
  end

  def recv
    @codec.decode(Wire.read_frame(@from_worker))
  end

  def test_calls_one_at_a_time_cost_one_read_each_and_no_look
    start(*IO.pipe)
    (1..20).each do |id|
      @to_worker.write(echo(id))
      assert_equal [id, { "n" => id }], recv.values_at("id", "result")
    end
    assert_equal 20, @input.reads
    assert_equal 0, Looks.count(@input)
  end

  def test_each_call_written_ahead_costs_one_look
    start(*IO.pipe)
    @to_worker.write((1..5).map { |id| echo(id) }.join)
    assert_equal (1..5).to_a, (1..5).map { recv["id"] }
    # One read brought the five; each of the four that waited was preceded
    # by one look at stdin (nothing there).
    assert_equal 1, @input.reads
    assert_equal 4, Looks.count(@input)
  end

  def test_a_socket_input_reads_ahead_too
    require "socket"
    start(*UNIXSocket.pair)
    @to_worker.write(frame({ "id" => 1, "command" => "gate", "args" => {} }) + echo(2) + echo(3))
    @started.pop
    @to_worker.write(frame({ "type" => "cancel", "id" => 2 }))
    # The cancel is in the socket before the gate opens.
    @gate << "open"
    got = [recv, recv, recv]
    assert_equal [[1, "open"], [3, { "n" => 3 }]], got.select { |m| m["success"] }.map { |m| [m["id"], m["result"]] }
    assert_equal([{ "type" => "Cancelled", "message" => "request 2 was cancelled before it started" }],
                 got.reject { |m| m["success"] }.map { |m| m["error"] })
    assert_operator Looks.count(@input), :>=, 1, "IO.select looked into the socket"
  end
end
