# Ruby worker for redteam_bridges.rs: promises of bridges/ruby/README.md
# checked through a real pool.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

worker.command("pid") { |_args, _ctx| { "pid" => Process.pid } }

worker.command("echo") { |args, _ctx| args }
# README, Codecs: Hash keys under MessagePack.
worker.command("int_keys") { |_args, _ctx| { 1 => "one" } }

# Sleeps; SIGINT at the deadline raises Cancelled in it, and its ensure runs.
worker.command("sleepy") do |args, _ctx|
  begin
    sleep(args.fetch("ms", 10_000) / 1000.0)
    { "slept" => true }
  ensure
    File.write(args["marker"], "ensure ran in #{Process.pid}") if args["marker"]
  end
end

# Chunks whether or not the caller streams (ctx.chunk always sends).
worker.command("chunks") do |args, ctx|
  n = args.fetch("n")
  n.times { |i| ctx.chunk({ "i" => i }) }
  { "sent" => n, "stream" => ctx.stream? }
end

worker.command("session_ops") do |args, ctx|
  before = ctx.session.get("k")
  ctx.session.set("k", args["value"])
  after = ctx.session["k"]
  deleted = ctx.session.delete("k")
  deleted_again = ctx.session.delete("k")
  { "before" => before, "after" => after, "deleted" => deleted, "deleted_again" => deleted_again }
end

worker.command("bin") { |args, _ctx| { "bytes" => ("\x00\xffok".b * args.fetch("n", 1)) } }

# What a binary argument arrived as, and the same bytes back.
worker.command("bin_in") do |args, _ctx|
  b = args["b"]
  { "class" => b.class.name, "encoding" => b.encoding.name, "size" => b.bytesize, "back" => b }
end

# Asks the host function "slow" and returns its answer.
worker.command("ask") { |args, ctx| { "answer" => ctx.call_host("slow", args), "pid" => Process.pid } }

module MyApp
  class Oops < StandardError; end
end

worker.command("oops") { |_args, _ctx| raise MyApp::Oops, "nested class" }

worker.run
