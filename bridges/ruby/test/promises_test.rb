# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "tmpdir"

# What docs/protocol.md and docs/bridges.md promise of the Ruby bridge that
# the other suites do not already show, against real worker processes.
class PromisesTest < Minitest::Test
  SCRIPT = <<~RUBY
    require "snakepit_bridge"
    worker = SnakepitBridge::Worker.new
    worker.command("chunk") { |_args, ctx| { "sent" => ctx.chunk({ "part" => 1 }), "stream" => ctx.stream? } }
    worker.command("only_args", ->(args) { { "got" => args } })
    worker.command("keys") { |args, _ctx| args.keys.map(&:class).map(&:name).uniq }
    worker.command("swallow") do |_args, _ctx|
      begin
        $stderr.puts "swallow: sleeping"
        $stderr.flush
        sleep 30
      rescue => e # rubocop:disable Style/RescueStandardError
        $stderr.puts "swallow: rescued \#{e.class}"
        "swallowed"
      end
    end
    worker.command("threaded_chunks") do |args, ctx|
      threads = args.fetch("threads")
      each = args.fetch("each")
      pad = "p" * args.fetch("pad")
      (0...threads).map do |t|
        Thread.new { each.times { |i| ctx.chunk({ "t" => t, "i" => i, "pad" => pad }) } }
      end.each(&:join)
      { "threads" => threads, "each" => each }
    end
    worker.run
  RUBY

  include ScriptWorkers

  # protocol.md section 4: "The stream ends inside a frame ...: the worker
  # treats it as the end of stdin and exits 0; it sends nothing".
  def test_eof_inside_a_frame_exits_0_and_sends_nothing
    ["\x00\x00".b, "\x00\x00\x00\x20{\"id\":1,".b].each do |cut|
      worker = spawn_worker
      worker.send_raw(cut)
      worker.close_stdin
      status = worker.wait
      refute_nil status, "the worker exits"
      assert_equal 0, status.exitstatus, worker.stderr
      assert_equal "", worker.drain_stdout(0.1), "nothing after the hello"
    end
  end

  # protocol.md section 5: "The Python and Node bridges omit it, the Ruby
  # bridge sends it" (a response's `timestamp`, UTC ISO-8601).
  def test_replies_carry_an_iso_8601_utc_timestamp
    worker = spawn_worker
    reply = worker.call(1, "ping")
    assert_match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\z/, reply["timestamp"], reply.inspect)
  end

  # bridges.md: "`ctx.chunk` always writes the frame"; `ctx.stream?` says
  # whether the caller streams.
  def test_chunk_always_writes_the_frame
    worker = spawn_worker
    worker.request(1, "chunk")
    chunk = worker.recv
    assert_equal({ "type" => "chunk", "id" => 1, "data" => { "part" => 1 } }, chunk)
    reply = worker.recv
    assert_equal 1, reply["id"]
    assert_equal false, reply["result"]["stream"], reply.inspect
    worker.request(2, "chunk", {}, stream: true)
    assert_equal "chunk", worker.recv["type"]
    assert_equal true, worker.recv["result"]["stream"]
  end

  # bridges.md: "a lambda or `Method` taking one parameter gets only
  # `args`. `args` is a Hash with string keys."
  def test_a_one_parameter_callable_gets_only_args_with_string_keys
    %w[json msgpack].each do |codec|
      next if codec == "msgpack" && !msgpack?

      worker = spawn_worker(codec: codec)
      reply = worker.call(1, "only_args", { "a" => 1 })
      assert_equal({ "got" => { "a" => 1 } }, reply["result"], reply.inspect)
      reply = worker.call(2, "keys", { "a" => 1, "b" => { "c" => 2 } })
      assert_equal ["String"], reply["result"], reply.inspect
    end
  end

  # bridges.md (Concurrency and cancellation) and README: "`Cancelled` is an
  # `Interrupt`, not a `StandardError`, so a plain `rescue => e` does not
  # swallow it": SIGINT still ends the handler with a failed reply of type
  # `Cancelled`, never the rescue's "swallowed".
  def test_sigint_is_not_swallowed_by_a_plain_rescue
    worker = spawn_worker
    worker.request(1, "swallow")
    assert_includes worker.stderr_until("swallow: sleeping"), "swallow: sleeping"
    worker.signal("INT")
    reply = worker.recv
    assert_equal 1, reply["id"], reply.inspect
    assert_equal false, reply["success"], "the rescue swallowed it: #{reply.inspect}"
    assert_equal "Cancelled", reply["error"]["type"], reply.inspect
    refute reply.key?("result"), reply.inspect
    refute_includes worker.stderr_until("swallow: rescued", timeout: 0.5), "swallow: rescued", "a plain rescue caught the cancellation"
    assert_equal({ "got" => { "n" => 2 } }, worker.call(2, "only_args", { "n" => 2 })["result"])
  end

  # README (Context): "`chunk` alone is also safe from other threads": 8
  # threads sending 500 chunks each in one call; every frame arrives whole
  # (each decodes, nothing interleaved), every chunk of every thread in its
  # thread's order, then the final reply.
  def test_chunk_from_many_threads_keeps_every_frame_whole
    %w[json msgpack].each do |codec|
      next if codec == "msgpack" && !msgpack?

      worker = spawn_worker(codec: codec)
      threads = 8
      each = 500
      pad = 700
      worker.request(1, "threaded_chunks", { "threads" => threads, "each" => each, "pad" => pad }, stream: true)
      seen = Array.new(threads) { [] }
      reply = nil
      loop do
        message = worker.recv # raises if a frame is cut or mixed with another
        if message["type"] == "chunk"
          assert_equal 1, message["id"], message.inspect
          data = message["data"]
          assert_equal %w[i pad t], data.keys.sort, data.inspect
          assert_equal "p" * pad, data["pad"]
          seen.fetch(data["t"]) << data["i"]
        else
          reply = message
          break
        end
      end
      assert_equal 1, reply["id"], reply.inspect
      assert_equal({ "threads" => threads, "each" => each }, reply["result"], reply.inspect)
      seen.each_with_index { |got, t| assert_equal (0...each).to_a, got, "thread #{t}'s chunks" }
      assert_equal "", worker.drain_stdout(0.1), "nothing after the final reply"
      assert_equal({ "got" => {} }, worker.call(2, "only_args")["result"])
    end
  end

  private

  def msgpack?
    require "msgpack"
    true
  rescue LoadError
    false
  end
end
