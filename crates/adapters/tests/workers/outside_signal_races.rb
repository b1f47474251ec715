# For outside_signal_races.rs: the Ruby counterpart of
# outside_signal_races.py. Every final reply the bridge writes is noted,
# once it is out, in <tmp>/snakepit-osr-replies-<pid>.log as "<id> ok" or
# "<id> <error type>". Handlers note what they did in the file `log` names.
require "tmpdir"
require "snakepit_bridge"

# Named when written: a worker forked from a preload template has a pid of
# its own.
def note_reply(id, what)
  path = File.join(Dir.tmpdir, "snakepit-osr-replies-#{Process.pid}.log")
  # A file left by an earlier process with the same pid is emptied by this
  # one's first reply.
  mode = $osr_writer == Process.pid ? "a" : "w"
  $osr_writer = Process.pid
  File.open(path, mode) { |f| f.puts("#{id} #{what}") }
end

module NotingReplies
  private

  def write_reply(id, outcome, ctx = nil)
    super
    note_reply(id, outcome[0] ? "ok" : outcome[1]["type"])
  end

  def reply_error(id, type, message)
    super
    note_reply(id, type)
  end
end
SnakepitBridge::Worker.prepend(NotingReplies)

worker = SnakepitBridge::Worker.new

note = lambda do |path, what|
  File.open(path, "a") { |f| f.puts(what) } if path
end

# Runs the block and returns what it does; notes "finally" in `log`
# however it ends.
noting_finally = lambda do |log, &body|
  body.call
ensure
  note.call(log, "finally")
end

worker.command("echo") do |args, ctx|
  { "token" => args["token"], "pid" => Process.pid, "id" => ctx.request_id }
end

worker.command("sleep") do |args, _ctx|
  note.call(args["log"], "start #{args['token']}")
  sleep(args["ms"] / 1000.0)
  note.call(args["log"], "end #{args['token']}")
  { "token" => args["token"], "pid" => Process.pid }
end

# Rescues the Cancelled of the pool's SIGINT and returns normally; then, if
# after_ms, goes on that long before returning.
worker.command("swallow") do |args, _ctx|
  note.call(args["log"], "start")
  begin
    sleep(args["ms"] / 1000.0)
    note.call(args["log"], "end")
    { "swallowed" => false }
  rescue SnakepitBridge::Cancelled
    note.call(args["log"], "caught")
    sleep(args.fetch("after_ms", 0) / 1000.0)
    note.call(args["log"], "returned")
    { "swallowed" => true }
  end
end

# Turns the Cancelled of the pool's SIGINT into another error.
worker.command("convert") do |args, _ctx|
  sleep(args["ms"] / 1000.0)
  {}
rescue SnakepitBridge::Cancelled
  note.call(args["log"], "caught")
  raise "aborted"
end

worker.command("chunks") do |args, ctx|
  pad = "p" * args.fetch("pad", 0)
  noting_finally.call(args["log"]) do
    args["n"].times do |i|
      ctx.chunk({ "i" => i, "pad" => pad })
      sleep(args["ms"] / 1000.0) if args["ms"]
    end
    note.call(args["log"], "end")
    { "sent" => args["n"], "token" => args["token"] }
  end
end

worker.command("host") do |args, ctx|
  noting_finally.call(args["log"]) do
    note.call(args["log"], "asking")
    value = ctx.call_host(args["function"], args.fetch("with", {}))
    note.call(args["log"], "answered #{value}")
    if args.key?("then_set")
      ctx.session.set(args["then_set"], args["value"])
      note.call(args["log"], "set")
    end
    { "value" => value, "pid" => Process.pid }
  end
end

# Waits for host function `slow`; its clean-up takes `cleanup_ms`.
worker.command("host_cleanup") do |args, ctx|
  begin
    ctx.call_host("slow", args["with"])
    note.call(args["log"], "answered")
  ensure
    sleep(args["cleanup_ms"] / 1000.0)
    note.call(args["log"], "cleaned")
  end
end

worker.command("big") do |args, _ctx|
  { "token" => args["token"], "data" => "b" * args["size"] }
end

worker.run
