# The Ruby side of the cross-language session test.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

worker.command("remember") do |args, ctx|
  ctx.session.set(args["key"], args["value"])
  { "pid" => Process.pid, "session_id" => ctx.session_id }
end

worker.command("recall") do |args, ctx|
  { "pid" => Process.pid, "value" => ctx.session.get(args["key"]) }
end

worker.command("forget") do |args, ctx|
  { "pid" => Process.pid, "deleted" => ctx.session.delete(args["key"]) }
end

worker.run
