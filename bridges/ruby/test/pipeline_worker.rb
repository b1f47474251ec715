#!/usr/bin/env ruby
# frozen_string_literal: true

# A worker for the read-ahead tests: every command records the request it
# ran, `ran` tells the test which ones did, and `gate` holds its request
# until the test writes to a FIFO, so a frame can be sent while it runs.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
ran = []

worker.command("shout") do |args, ctx|
  ran << ctx.request_id
  args.fetch("text").upcase
end

# Sends "started" once running, then waits for the test to open the FIFO
# at args["fifo"] and write to it; returns what was written.
worker.command("gate") do |args, ctx|
  ran << ctx.request_id
  ctx.chunk("started")
  File.read(args.fetch("fifo"))
end

# Sends "started" once running, then sleeps (until SIGINT, in the tests).
worker.command("sleep") do |args, ctx|
  ran << ctx.request_id
  ctx.chunk("started")
  sleep args.fetch("seconds", 30)
  "slept"
end

worker.command("host") do |args, ctx|
  ran << ctx.request_id
  ctx.call_host(args.fetch("function", "thing"), {})
end

worker.command("ran") { |_args, _ctx| ran }

worker.run
