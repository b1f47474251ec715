# Handlers for outside_ruby_readme.rs: the promises of bridges/ruby/README.md
# that its example does not show. Environment knobs:
#   ORR_CODEC_ARG  passed as Worker.new(codec: ...) when set
#   ORR_OWN_PING   "ok" registers a ping of its own answering status ok,
#                  "bad" one answering status "broken"
require "stringio"
require "openssl"
require "snakepit_bridge"

codec_arg = ENV["ORR_CODEC_ARG"]
worker = codec_arg ? SnakepitBridge::Worker.new(codec: codec_arg) : SnakepitBridge::Worker.new

# "Any object answering #call works too; one taking a single parameter gets
# just the args."
class Upcaser
  def call(args)
    args.fetch("text").upcase
  end
end

class TwoParams
  def call(args, ctx)
    { "text" => args.fetch("text"), "command" => ctx.command }
  end
end

worker.command("object_one", Upcaser.new)
worker.command("object_two", TwoParams.new)
worker.command("lambda_one", ->(args) { args.fetch("text").reverse })

case ENV["ORR_OWN_PING"]
when "ok"
  worker.command("ping") { |args, _ctx| { "status" => "ok", "mine" => true, "args" => args } }
when "bad"
  worker.command("ping") { |_args, _ctx| { "status" => "broken" } }
end

worker.command("pid") { |_a, _c| { "pid" => Process.pid } }
worker.command("msgpack_loaded") { |_a, _c| { "loaded" => !defined?(::MessagePack).nil? } }
worker.command("worker_id") { |_a, ctx| { "worker_id" => ctx.worker_id } }

# A result whose key order and key types the JSON codec must keep.
worker.command("ordered") { |_a, _c| { "b" => 1, "a" => 2, :c => 3, "nested" => { "z" => 1, "y" => 2 } } }

# What the codec made of the args the pool sent.
worker.command("key_classes") do |args, _c|
  inner = args["map"]
  { "classes" => inner.keys.map { |k| k.class.name }, "keys" => inner.keys.map(&:to_s) }
end

# US-ASCII and UTF-8 strings are str under MessagePack.
worker.command("ascii") { |_a, _c| { "v" => "plain".dup.force_encoding(Encoding::US_ASCII), "u" => "caf\u00e9" } }

# ctx.session.[] and []= (docs/bridges.md).
worker.command("session_alias") do |args, ctx|
  before = ctx.session[args["key"]]
  ctx.session[args["key"]] = args["value"]
  after = ctx.session[args["key"]]
  existed = ctx.session.delete(args["key"])
  again = ctx.session.delete(args["key"])
  { "before" => before, "after" => after, "existed" => existed, "again" => again }
end

# docs/bridges.md's `lookup` host function, and its failure.
worker.command("lookup") do |args, ctx|
  { "ok" => ctx.call_host("lookup", args) }
rescue SnakepitBridge::HostCallError => e
  { "error_type" => e.error_type, "message" => e.message, "class" => e.class.name }
end

# Bytes (a binary String, `bin` under MessagePack) passed to the host.
worker.command("binary_to_host") do |_args, ctx|
  out = {}
  begin
    ctx.session.set("k", "\x00\xff".b)
    out["set"] = "stored"
  rescue SnakepitBridge::HostCallError => e
    out["set"] = e.error_type
  end
  out["get"] = ctx.session.get("k")
  out
end

# call_host arguments the codec cannot represent raise in the handler.
worker.command("bad_host_args") do |args, ctx|
  bad = { "nan" => Float::NAN, "object" => Object.new,
          "bad_string" => "caf\xff".dup.force_encoding(Encoding::UTF_8) }.fetch(args.fetch("what"))
  begin
    ctx.call_host("count", { "v" => bad })
    { "raised" => nil }
  rescue Exception => e # rubocop:disable Lint/RescueException -- report what was raised
    { "raised" => e.class.name, "then" => ctx.call_host("count", { "v" => 1 }) }
  end
end

# Errors whose message or backtrace holds bytes that are not valid UTF-8.
worker.command("bad_error") do |args, _c|
  case args.fetch("mode")
  when "utf8" then raise "caf\xff".dup.force_encoding(Encoding::UTF_8)
  when "binary" then raise RuntimeError, "bin\xff\xfe".b
  when "latin1" then raise RuntimeError, "caf\xe9".dup.force_encoding(Encoding::ISO_8859_1)
  when "backtrace"
    eval("raise 'from a bad file name'", binding, "file\xff.rb".dup.force_encoding(Encoding::UTF_8), 1) # rubocop:disable Security/Eval
  end
end

# Exceptions whose own methods fail: a message built from data that is not
# there, a backtrace overridden to something else than an Array.
class RecordError < StandardError
  def initialize(record)
    @record = record
    super()
  end

  def message
    "failed for #{@record.fetch('name')}"
  end
end

class OddBacktrace < StandardError
  def backtrace
    "one line"
  end
end

worker.command("record_error") { |_a, _c| raise RecordError, nil }
worker.command("odd_backtrace") { |_a, _c| raise OddBacktrace, "odd" }

# Leaving the process by a signal's exception.
worker.command("signal_exception") { |args, _c| raise SignalException, args.fetch("sig") }
worker.command("slow") do |args, _c|
  sleep(args.fetch("ms") / 1000.0)
  { "pid" => Process.pid }
end

# Code written with `rescue Exception` around its work, retrying it. The
# line it prints is inside the begin: whatever lands after it is rescued.
worker.command("rescue_everything") do |args, _c|
  finish = Process.clock_gettime(Process::CLOCK_MONOTONIC) + args.fetch("ms") / 1000.0
  printed = false
  begin
    unless printed
      printed = true
      print "#{args['text']}\n"
    end
    sleep 0.02 while Process.clock_gettime(Process::CLOCK_MONOTONIC) < finish
  rescue Exception # rubocop:disable Lint/RescueException -- on purpose
    retry
  end
  true
end

# $stdout: unbuffered, closable, and left alone when assigned by the user.
worker.command("print_then_sleep") do |args, _c|
  print "#{args['text']}\n"
  sleep(args.fetch("ms") / 1000.0)
  true
end
worker.command("close_then_print") do |args, ctx|
  $stdout.close
  $stderr.puts "stderr-after-close-4417"
  ctx.logger.info("logger-after-close-4418")
  begin
    puts args["text"]
    { "after_close" => "printed" }
  rescue IOError => e
    { "after_close" => e.class.name }
  end
end
worker.command("print") do |args, _c|
  puts args["text"]
  { "stdout_class" => $stdout.class.name, "fd" => $stdout.fileno }
end
worker.command("assign_stdout") do |args, _c|
  $stdout = args["closed"] ? File.open(File::NULL, "w") : StringIO.new
  $stdout.close if args["closed"]
  { "stdout_class" => $stdout.class.name }
end
worker.command("stdout_state") do |_a, _c|
  { "stdout_class" => $stdout.class.name, "closed" => $stdout.closed? }
end

# ctx.chunk from other threads, and from a thread left running.
LATE = Queue.new
worker.command("threaded_chunks") do |args, ctx|
  n = args.fetch("n")
  threads = Array.new(args.fetch("threads")) do |t|
    Thread.new { n.times { |i| ctx.chunk({ "t" => t, "i" => i, "pad" => "x" * 200 }) } }
  end
  n.times { |i| ctx.chunk({ "t" => "main", "i" => i }) }
  threads.each(&:join)
  "joined"
end
# A progress thread chunking while the handler waits in host calls.
worker.command("chunks_during_host_calls") do |args, ctx|
  n = args.fetch("n")
  progress = Thread.new do
    n.times do |i|
      ctx.chunk({ "i" => i })
      sleep 0.002
    end
  end
  answers = Array.new(args.fetch("calls")) { |k| ctx.call_host("echo", { "k" => k }) }
  progress.join
  answers
end
worker.command("leave_thread") do |_a, ctx|
  Thread.new do
    sleep 0.3
    LATE << ctx.chunk({ "late" => true })
  end
  "answered"
end
worker.command("late_result") { |_a, _c| { "chunk_returned" => LATE.pop } }

# Code SIGINT cannot interrupt (a long call inside a C extension), then Ruby.
worker.command("c_call") do |args, ctx|
  File.write(args["note"], "start\n", mode: "a")
  OpenSSL::KDF.pbkdf2_hmac("pw", salt: "salt", iterations: args.fetch("iterations"), length: 32, hash: "sha256")
  File.write(args["note"], "returned cancelled=#{ctx.cancelled?}\n", mode: "a")
  x = 0
  200_000_000.times { x += 1 }
  File.write(args["note"], "end\n", mode: "a")
  x
end

# A plain `rescue => e` around work of each kind: sleep, IO, Ruby code.
worker.command("plain_rescue") do |args, _c|
  note = args["note"]
  begin
    begin
      case args.fetch("mode")
      when "sleep" then sleep 60
      when "io"
        r, _w = IO.pipe
        r.read(1)
      when "ruby"
        x = 0
        loop { x += 1 }
      end
      File.write(note, "finished\n", mode: "a")
    rescue => e # rubocop:disable Style/RescueStandardError -- the README's example of a plain rescue
      File.write(note, "rescued #{e.class}\n", mode: "a")
      "swallowed"
    end
  ensure
    File.write(note, "ensure #{$!.class}\n", mode: "a")
  end
end

# A loop that holds its cancellation back and polls ctx.cancelled? (as code
# SIGINT cannot interrupt would), then stops with check_cancelled!. Both
# inside the held-back section: leaving it delivers the pending Cancelled.
worker.command("poll") do |args, ctx|
  Thread.handle_interrupt(SnakepitBridge::Cancelled => :never) do
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
    sleep 0.01 until ctx.cancelled? || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
    File.write(args["note"], "polled #{ctx.cancelled?}\n", mode: "a")
    begin
      ctx.check_cancelled!
      File.write(args["note"], "check_cancelled! did not raise\n", mode: "a")
    rescue SnakepitBridge::Cancelled => e
      File.write(args["note"], "raised #{e.class} is_interrupt=#{e.is_a?(Interrupt)}\n", mode: "a")
      raise
    end
  end
  "finished"
end

worker.run
$stderr.puts "orr: worker.run returned"
exit(Integer(ENV.fetch("ORR_EXIT_AFTER_RUN", "0")))
