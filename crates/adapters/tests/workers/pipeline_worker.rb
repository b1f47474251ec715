# A worker for the Ruby pipelining tests (ruby_pipeline.rs): each command
# does one thing a test needs to observe. `echo` counts the calls it ran,
# `sleep` touches a marker file once running and returns its token, `pid`
# says who served it.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
served = 0

worker.command("echo") do |args, _ctx|
  served += 1
  { "echoed" => args, "pid" => Process.pid, "served" => served }
end

worker.command("sleep") do |args, _ctx|
  File.write(args["marker"], "") if args["marker"]
  sleep(args.fetch("ms", 0) / 1000.0)
  { "token" => args["token"], "pid" => Process.pid }
end

worker.command("pid") { |_args, _ctx| { "pid" => Process.pid } }

worker.run
