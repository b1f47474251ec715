# Handlers for outside_readme_round6.rs (README.md and ARCHITECTURE.md as
# promises): many host calls at once from threads the handler starts.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
worker.command("pid") { |_args, _ctx| { "pid" => Process.pid } }
worker.command("many_host") do |args, ctx|
  threads = (0...args["n"]).map { |i| Thread.new { ctx.call_host("echo", { "i" => i }) } }
  got = threads.map(&:value)
  { "sum" => got.sum { |g| g["i"] } }
end
marks = 0
worker.command("sleep") do |args, _ctx|
  sleep(args["ms"] / 1000.0)
  { "pid" => Process.pid }
end
worker.command("mark") { |_args, _ctx| { "marks" => (marks += 1) } }
worker.command("marks") { |_args, _ctx| { "marks" => marks } }
worker.command("chunks") do |args, ctx|
  sent = 0
  args["count"].times { |i| sent += 1 unless ctx.chunk({ "n" => i }) == false }
  { "sent" => sent }
end
worker.run
