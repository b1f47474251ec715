# A worker for outside_bridges_doc_round6.rs: the rows of docs/bridges.md's
# context table, host-call failures and the session store, in Ruby.

require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

# What `stall` saw when its call was given up, for `saw` to report.
seen = []
# How many `meet` calls have started.
met = 0

worker.command("saw") { |_args, _ctx| seen }

worker.command("stall") do |_args, _ctx|
  sleep 60
  seen << "slept"
rescue Exception => e # rubocop:disable Lint/RescueException
  seen << e.class.name
  raise
end

worker.command("meet") do |_args, _ctx|
  # Waits (at most 10 s) until a second `meet` has started.
  met += 1
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
  sleep 0.01 while met < 2 && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
  met >= 2
end

failure = lambda do |e|
  { "class" => e.class.name.split("::").last, "type" => e.error_type, "message" => e.message }
end

worker.command("fields") do |_args, ctx|
  seen = ctx.call_host("whoami", {})
  {
    "pid" => Process.pid,
    "request_id" => ctx.request_id,
    "command" => ctx.command,
    "session_id" => ctx.session_id,
    "worker_id" => ctx.worker_id,
    "timeout_ms" => ctx.timeout_ms,
    "stream" => ctx.stream?,
    # Ruby's chunk is sent even without a stream (the pool drops it).
    "chunk_sent" => ctx.chunk("a chunk"),
    "host_saw" => seen
  }
end

worker.command("bytes_to_host") do |_args, ctx|
  out = { "pid" => Process.pid }
  begin
    ctx.session.set("k", "\x00\x01bin".b)
    out["set"] = "stored"
  rescue SnakepitBridge::HostCallError => e
    out["set"] = failure.call(e)
  end
  out["get"] = ctx.session.get("k")
  out
end

worker.command("host_failures") do |_args, ctx|
  out = { "pid" => Process.pid }
  %w[fails nowhere].each do |name|
    out[name] = ctx.call_host(name, { "id" => "x" })
  rescue SnakepitBridge::HostCallError => e
    out[name] = failure.call(e)
  end
  out
end

worker.command("delete") do |_args, ctx|
  ctx.session["d"] = 1
  [ctx.session.delete("d"), ctx.session.delete("d"), ctx.session["d"]]
end

worker.run
