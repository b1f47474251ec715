#!/usr/bin/env ruby
# my_worker.rb: run by the pool as `ruby my_worker.rb --mode pool-worker`
require "snakepit_bridge"
require "time" # Time#iso8601 lives in the time library

worker = SnakepitBridge::Worker.new # the codec comes from SNAKEPIT_CODEC

# A handler gets the request's args (a Hash with string keys) and a context.
# Its return value is the reply's result.
worker.command("greet") do |args, ctx|
  ctx.logger.info("greeting #{args['name']}") # logs go to stderr
  { "greeting" => "Hello, #{args.fetch('name', 'world')}!", "at" => Time.now.utc.iso8601 }
end

# Partial results go out as chunk frames before the final reply.
worker.command("count_to") do |args, ctx|
  (1..args.fetch("n")).each { |i| ctx.chunk({ "i" => i }) }
  "done"
end

# State kept by the pool for the caller's session, through host calls.
worker.command("remember") do |args, ctx|
  previous = ctx.session.get("last")
  ctx.session.set("last", args["value"])
  { "previous" => previous }
end

# An exception becomes a failed reply:
# {type: "ArgumentError", message: "n must be positive", traceback: "..."}
worker.command("check") do |args, _ctx|
  raise ArgumentError, "n must be positive" unless args.fetch("n", 0).positive?

  true
end

# Any object answering #call works too; one taking a single parameter gets
# just the args.
def shout(args)
  args.fetch("text").upcase
end
worker.command("shout", method(:shout))

# To also serve ping/echo/compute/info: SnakepitBridge::Generic.register(worker)
worker.run # serves until the pool closes stdin, then returns
