# For sigint_before_start.rs: `slow` notes its start and its end in the
# file `log` names, and sleeps `ms` between them; `pad` (a large string)
# makes its request slow to read and decode.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

note = lambda do |path, what|
  File.open(path, "a") { |f| f.puts(what) }
end

worker.command("slow") do |args, _ctx|
  note.call(args["log"], "start")
  sleep(args["ms"] / 1000.0)
  note.call(args["log"], "end")
  { "len" => args["pad"].length }
end

worker.run
