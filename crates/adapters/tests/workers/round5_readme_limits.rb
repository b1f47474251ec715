# Handlers whose results, errors, chunks and host calls are sized by the
# caller, for outside_readme_round5.rs (README: max_frame_size and the
# ResultTooLarge entry of Troubleshooting).
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

worker.command("pid") { |_a, _c| { "pid" => Process.pid, "limit" => ENV["SNAKEPIT_MAX_FRAME_SIZE"] } }
worker.command("sized") { |args, _c| (args["text"] || "x") * args["n"] }
worker.command("length") { |args, _c| { "len" => args["s"].length } }
worker.command("fail_long") { |args, _c| raise ArgumentError, (args["text"] || "y") * args["n"] }
worker.command("chunks") do |args, ctx|
  sent = 0
  args["count"].times { sent += 1 unless ctx.chunk("c" * args["size"]) == false }
  { "sent" => sent }
end
worker.command("big_chunk") do |args, ctx|
  ctx.chunk("small")
  ok = ctx.chunk((args["text"] || "c") * args["n"])
  { "caught" => ok == false ? "returned false" : nil }
end
worker.command("set_big") do |args, ctx|
  begin
    ctx.session.set("k", (args["text"] || "z") * args["n"])
  rescue SnakepitBridge::HostCallError => e
    next { "error" => e.error_type }
  end
  { "error" => nil }
end
worker.command("host_big") do |args, ctx|
  begin
    got = ctx.call_host("big", { "n" => args["n"] })
  rescue SnakepitBridge::HostCallError => e
    next { "error" => e.error_type }
  end
  { "len" => got.length }
end
worker.run
