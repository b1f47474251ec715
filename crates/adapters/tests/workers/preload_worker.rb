# A worker for the preload tests: its top-level code appends its pid to
# $PRELOAD_MARKER (once per template, so once per pool), an after-fork hook
# records the process it ran in, and `whoami` tells the test all of it.
require "snakepit_bridge"

LOADED_IN = Process.pid
File.open(ENV["PRELOAD_MARKER"], "a") { |f| f.puts(LOADED_IN) } if ENV["PRELOAD_MARKER"]
raise "model file missing: /models/absent.bin" if ENV["PRELOAD_FAIL"]
Thread.new { sleep 3600 } if ENV["PRELOAD_THREAD"]

worker = SnakepitBridge::Worker.new
hooked = {}
worker.after_fork { hooked["pid"] = Process.pid }

whoami = lambda do |args|
  {
    "pid" => Process.pid,
    "ppid" => Process.ppid,
    "pgid" => Process.getpgid(0),
    "loaded_in" => LOADED_IN,
    "hook_pid" => hooked["pid"],
    "worker_id" => ENV["SNAKEPIT_WORKER_ID"],
    "run_id" => ENV["SNAKEPIT_RUN_ID"],
    "preload" => ENV["SNAKEPIT_PRELOAD"],
    "echo" => args,
  }
end

worker.command("whoami") { |args, _ctx| whoami.call(args) }

worker.command("spawn_child") do |_args, _ctx|
  child = Process.spawn("sleep", "300")
  Process.detach(child)
  { "pid" => Process.pid, "child_pid" => child }
end

worker.command("sleep") do |args, _ctx|
  File.write(args["marker"], "") if args["marker"]
  sleep(args["ms"] / 1000.0)
  whoami.call(args)
end

worker.command("crash") { |_args, _ctx| exit!(3) }

worker.run
