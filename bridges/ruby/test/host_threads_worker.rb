#!/usr/bin/env ruby
# frozen_string_literal: true

# A worker whose handlers call the host from threads they start (see
# host_call_threads_test.rb). The test's fake pool answers the host calls;
# "outcome" reports what the host call of a thread left behind got.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
outcomes = {}
finished = Hash.new { |h, k| h[k] = Queue.new }
go = Hash.new { |h, k| h[k] = Queue.new }
slots = Mutex.new

attempt = lambda do |ctx, args|
  { "result" => ctx.call_host("echo", args) }
rescue StandardError, SnakepitBridge::Cancelled => e
  # A Cancelled is reported too, but on the handler's own thread it ends
  # the call (as a SIGINT's does).
  raise if e.is_a?(SnakepitBridge::Cancelled) && Thread.current == Thread.main && ctx.cancelled?

  { "type" => e.class.name.split("::").last, "message" => e.message }
end

worker.command("fan_out") do |args, ctx|
  n = args.fetch("n", 3)
  threads = Array.new(n) { |i| Thread.new { attempt.call(ctx, { "i" => i }) } }
  here = args["here"] ? attempt.call(ctx, { "i" => "here" }) : nil
  { "threads" => threads.map(&:value), "here" => here }
end

# A thread waits for the host while the handler's own thread sleeps.
worker.command("sleep_while_asking") do |args, ctx|
  tag = args.fetch("tag")
  done = slots.synchronize { finished[tag] }
  Thread.new do
    outcomes[tag] = attempt.call(ctx, { "i" => "thread" })
    done << true
  end
  sleep args.fetch("seconds", 30)
  "not interrupted"
end

worker.command("leave") do |args, ctx|
  tag = args.fetch("tag")
  done, start = slots.synchronize { [finished[tag], go[tag]] }
  start << true if args["now"]
  Thread.new do
    start.pop
    outcomes[tag] = attempt.call(ctx, { "tag" => tag })
    done << true
  end
  "left"
end

worker.command("leave_waiting") do |args, ctx|
  tag = args.fetch("tag")
  done = slots.synchronize { finished[tag] }
  started = Queue.new
  Thread.new do
    started << true
    outcomes[tag] = attempt.call(ctx, { "tag" => tag })
    done << true
  end
  started.pop
  "left"
end

worker.command("go") do |args|
  slots.synchronize { go[args.fetch("tag")] } << true
  "going"
end

worker.command("outcome") do |args|
  tag = args.fetch("tag")
  done = slots.synchronize { finished[tag] }
  if Thread.new { done.pop }.join(10)
    outcomes[tag]
  else
    { "type" => "Timeout", "message" => "the thread's host call did not end" }
  end
end

worker.run
