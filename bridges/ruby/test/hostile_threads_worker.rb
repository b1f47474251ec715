#!/usr/bin/env ruby
# frozen_string_literal: true

# A worker for host_threads_hostile_test.rb: handlers whose threads call the
# host in awkward moments. The test's fake pool answers every host call with
# {"echo" => args}; each thread's outcome is kept by tag, and "report"
# returns them once every thread has ended.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
lock = Mutex.new
outcomes = {}
threads = []
gates = Hash.new { |h, k| h[k] = Queue.new }
order = []

attempt = lambda do |ctx, args|
  { "result" => ctx.call_host("echo", args) }
rescue StandardError, SnakepitBridge::Cancelled => e
  # On the serving thread a Cancelled of the call itself ends the call.
  raise if e.is_a?(SnakepitBridge::Cancelled) && Thread.current == Thread.main && ctx.cancelled?

  { "type" => e.class.name.split("::").last, "message" => e.message }
end

start = lambda do |&body|
  t = Thread.new(&body)
  lock.synchronize { threads << t }
  t
end

gate = ->(tag) { lock.synchronize { gates[tag] } }

# +n+ threads, each calling the host +k+ times in a row, the serving thread
# too; what every call got.
worker.command("swarm") do |args, ctx|
  n = args.fetch("n")
  k = args.fetch("k")
  one = ->(i) { Array.new(k) { |j| attempt.call(ctx, { "i" => i, "j" => j, "rid" => ctx.request_id }) } }
  pool = Array.new(n) { |i| Thread.new { one.call(i) } }
  mine = one.call(n)
  pool.map(&:value) + [mine]
end

# A thread that calls the host the moment the handler returns, give or
# take a little (which moment depends on the tag).
worker.command("race_return") do |args, ctx|
  tag = args.fetch("tag")
  m = Mutex.new
  cv = ConditionVariable.new
  ready = false
  begin
    start.call do
      # With a time limit: a SIGINT may cut the handler short anywhere.
      m.synchronize { cv.wait(m, 2) unless ready }
      outcomes[tag] = attempt.call(ctx, { "tag" => tag })
    end
  ensure
    m.synchronize do
      ready = true
      cv.signal
    end
  end
  case tag.to_i % 4
  when 1 then Thread.pass
  when 2 then (0...2000).sum
  when 3 then sleep 0.0005
  end
  tag
end

# A thread whose host call is sent (or about to be) when the handler
# returns; the test's pool holds it unanswered.
worker.command("hold_then_return") do |args, ctx|
  tag = args.fetch("tag")
  started = Queue.new
  start.call do
    started << true
    outcomes[tag] = attempt.call(ctx, { "tag" => tag })
  end
  started.pop
  tag
end

# A thread that calls the host once the next call opens its gate.
worker.command("leave_for_next") do |args, ctx|
  tag = args.fetch("tag")
  g = gate.call(tag)
  start.call do
    g.pop
    outcomes[tag] = attempt.call(ctx, { "tag" => tag })
    gate.call("#{tag}/done") << true
  end
  tag
end

# Opens the gate of a thread left by an earlier call and calls the host
# from here and from a thread of its own while that thread tries.
worker.command("open_and_call") do |args, ctx|
  tag = args.fetch("tag")
  gate.call(tag) << true
  fresh = Thread.new { attempt.call(ctx, { "fresh" => ctx.request_id }) }
  here = attempt.call(ctx, { "here" => ctx.request_id })
  done = gate.call("#{tag}/done")
  Thread.new { done.pop }.join(30)
  { "here" => here, "thread" => fresh.value }
end

# A thread calls the host while the serving thread blocks (+how+: join,
# cond or sleep) without reading stdin.
worker.command("ask_and_block") do |args, ctx|
  tag = args.fetch("tag")
  t = start.call { outcomes[tag] = attempt.call(ctx, { "tag" => tag }) }
  case args.fetch("how")
  when "join" then t.join
  when "cond"
    m = Mutex.new
    m.synchronize { ConditionVariable.new.wait(m, 60) }
  else sleep 60
  end
  { "joined" => outcomes[tag] }
end

worker.command("mark") do |_args, ctx|
  order << ctx.request_id
  ctx.request_id
end

worker.command("order") { order.dup }

worker.command("report") do
  all = lock.synchronize { threads.dup }
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
  all.each { |t| t.join([deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC), 0].max) }
  { "alive" => all.count(&:alive?), "outcomes" => outcomes.dup }
end

worker.run
