#!/usr/bin/env ruby
# frozen_string_literal: true

# A user-style worker for the end-to-end tests: it loads the bridge through
# RUBYLIB (the bridge directory), as a script run by a pool would.
require "snakepit_bridge"

class ExampleError < StandardError; end

# A handler registered as a method object.
class Maths
  def square(args)
    args.fetch("x")**2
  end
end

worker = SnakepitBridge::Worker.new
SnakepitBridge::Generic.register(worker)

worker.command("square", Maths.new.method(:square))

worker.command("context") do |_args, ctx|
  {
    "request_id" => ctx.request_id,
    "session_id" => ctx.session_id,
    "worker_id" => ctx.worker_id,
    "traceparent" => ctx.traceparent,
    "stream" => ctx.stream?,
    "cancelled" => ctx.cancelled?
  }
end

# Everything user code might print; none of it may reach the frame stream.
worker.command("noisy") do |_args, ctx|
  puts "puts to stdout"
  print "print to stdout\n"
  $stdout.write("$stdout.write\n")
  STDOUT.write("STDOUT.write\n")
  system("echo from a child process")
  ctx.logger.info("logger line")
  "quiet reply"
end

worker.command("count") do |args, ctx|
  n = args.fetch("n", 3)
  n.times { |i| ctx.chunk({ "index" => i }) }
  { "count" => n, "stream" => ctx.stream? }
end

# Sends a chunk once it is running so the test knows when to signal it.
worker.command("sleep") do |args, ctx|
  ctx.chunk("started")
  sleep args.fetch("seconds", 30)
  "slept"
end

worker.command("fail") do |args, _ctx|
  raise ExampleError, args.fetch("message", "it broke")
end

worker.command("session_roundtrip") do |args, ctx|
  ctx.session.set("k", args["value"])
  got = ctx.session.get("k")
  deleted = ctx.session.delete("k")
  begin
    ctx.call_host("nope", { "x" => 1 })
    missing = nil
  rescue SnakepitBridge::HostCallError => e
    missing = { "type" => e.error_type, "message" => e.message }
  end
  { "got" => got, "deleted" => deleted, "missing" => missing }
end

worker.command("wait_host") do |_args, ctx|
  ctx.call_host("slow.thing", {})
end

worker.command("reverse_bytes") do |args, _ctx|
  args.fetch("data").reverse
end

worker.command("bad_result") { |_args, _ctx| Float::NAN }

worker.run
