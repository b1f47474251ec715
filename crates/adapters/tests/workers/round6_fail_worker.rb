# For outside_failures_round6.rs: a Ruby worker on the bundled bridge whose
# commands do what FAILURES.md's scenarios need. `sleep` notes its token and
# pid in the directory `dir` names once it runs, and with `ignore_term`
# makes the worker ignore SIGTERM; `spawn_child` starts a `sleep` of its
# own; `fork_child` forks without exec, so the child keeps every descriptor
# of the worker, the protocol pipes included; `flood_stderr` writes `mb`
# MiB to stderr without a newline.
require "snakepit_bridge"

# Start-up faults, as the environment asks: ROUND6_PID_FILE gets the pid;
# ROUND6_EXIT_AT_LOAD exits with that status after a line on stderr;
# ROUND6_SLEEP_AT_LOAD_MS sleeps that long before the handshake.
File.write(ENV["ROUND6_PID_FILE"], Process.pid.to_s) if ENV["ROUND6_PID_FILE"]
if ENV["ROUND6_EXIT_AT_LOAD"]
  $stderr.puts "model file missing, giving up"
  $stderr.flush
  exit!(Integer(ENV["ROUND6_EXIT_AT_LOAD"]))
end
sleep(Integer(ENV["ROUND6_SLEEP_AT_LOAD_MS"]) / 1000.0) if ENV["ROUND6_SLEEP_AT_LOAD_MS"]

# With ROUND6_BROKEN_IF_EXISTS naming a file that exists, the script fails
# as it loads, as one whose dependency went missing does.
broken = ENV["ROUND6_BROKEN_IF_EXISTS"]
require "round6_no_such_library" if broken && File.exist?(broken)

worker = SnakepitBridge::Worker.new

worker.command("sleep") do |args, _ctx|
  Signal.trap("TERM", "IGNORE") if args["ignore_term"]
  File.write(File.join(args["dir"], args["token"].to_s), Process.pid.to_s) if args["dir"]
  sleep((args["ms"] || 0) / 1000.0)
  { "token" => args["token"], "pid" => Process.pid }
end

# Counts the session's visits in the pool's session store.
worker.command("visit") do |_args, ctx|
  seen = ctx.session.get("visits") || 0
  ctx.session.set("visits", seen + 1)
  { "visits" => seen + 1, "pid" => Process.pid, "session" => ctx.session_id }
end

# Reads address 8: a real segmentation fault (Ruby reports it on stderr,
# then aborts). A line on stderr first: the crash report's tail must carry
# it.
worker.command("segfault") do |_args, _ctx|
  require "fiddle"
  $stderr.puts "about to crash on purpose"
  $stderr.flush
  Fiddle::Pointer.new(8)[0, 8]
end

# Holds `mb` MiB, filled so that the pages are really there.
HELD = []
worker.command("grow") do |args, _ctx|
  HELD << ("m" * (args["mb"] << 20))
  { "pid" => Process.pid }
end

worker.command("spawn_child") do |_args, _ctx|
  child = Process.spawn("sleep", "600", in: File::NULL, out: File::NULL, err: File::NULL)
  Process.detach(child)
  { "child_pid" => child, "pid" => Process.pid }
end

worker.command("fork_child") do |_args, _ctx|
  child = Process.fork do
    sleep 600
    exit!(0)
  end
  Process.detach(child)
  { "child_pid" => child, "pid" => Process.pid }
end

worker.command("flood_stderr") do |args, _ctx|
  chunk = (args["cr"] ? ("x" * 1023 + "\r") : ("x" * 1024)) * 1024
  io = IO.for_fd(2, autoclose: false)
  args["mb"].times { io.syswrite(chunk) }
  { "pid" => Process.pid }
end

worker.run
