# frozen_string_literal: true

# host_call_threads.rs: handlers that call the host from threads they start.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
state = { go: Queue.new, finished: Queue.new, outcome: nil }

attempt = lambda do |ctx, args|
  { "result" => ctx.call_host("echo", args) }
rescue StandardError, SnakepitBridge::Cancelled => e
  raise if e.is_a?(SnakepitBridge::Cancelled) && Thread.current == Thread.main

  { "type" => e.class.name.split("::").last, "message" => e.message }
end

worker.command("fan_out") do |args, ctx|
  threads = Array.new(args.fetch("n")) { |i| Thread.new { attempt.call(ctx, { "i" => i }) } }
  here = attempt.call(ctx, { "i" => "here" })
  { "threads" => threads.map(&:value), "here" => here, "pid" => Process.pid }
end

worker.command("leave") do |_args, ctx|
  state[:go] = Queue.new
  state[:finished] = Queue.new
  go = state[:go]
  finished = state[:finished]
  Thread.new do
    go.pop
    state[:outcome] = attempt.call(ctx, { "late" => true })
    finished << true
  end
  Process.pid
end

worker.command("go") do |_args|
  state[:go] << true
  Process.pid
end

worker.command("outcome") do |_args|
  finished = state[:finished]
  if Thread.new { finished.pop }.join(10)
    state[:outcome].merge("pid" => Process.pid)
  else
    { "type" => "Timeout", "message" => "the left-behind thread's host call did not end" }
  end
end

worker.run
