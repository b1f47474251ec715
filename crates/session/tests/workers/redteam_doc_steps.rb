# Runs the steps a test gives, through ctx.session and ctx.call_host, and
# answers what each gave: {ok: value} or {caught: <HostCallError type>}.
# `set_nested` stores an array nested `depth` levels deep; `get_depth`
# answers how deep the value read is. A `wait` step creates the file `started` and waits for the file `go`.
require "snakepit_bridge"

def run_step(step, ctx)
  case step["op"]
  when "get" then ctx.session.get(step["key"])
  when "set" then ctx.session.set(step["key"], step["value"])
  when "delete" then ctx.session.delete(step["key"])
  when "set_nested"
    v = 0
    step["depth"].times { v = [v] }
    ctx.session.set(step["key"], v)
  when "get_depth"
    v = ctx.session.get(step["key"])
    depth = 0
    while v.is_a?(Array)
      v = v[0]
      depth += 1
    end
    depth
  when "program" then ctx.call_host("session.get_program", { "program_id" => step["id"] })
  when "global" then ctx.call_host("session.get_global_program", { "program_id" => step["id"] })
  when "store_program"
    ctx.call_host("session.store_program", { "program_id" => step["id"], "program" => step["value"] })
  when "wait"
    File.write(step["started"], "")
    deadline = Time.now + 60
    until File.exist?(step["go"])
      raise "the test never said go" if Time.now > deadline
      sleep 0.01
    end
    nil
  else raise "unknown step #{step["op"]}"
  end
end

worker = SnakepitBridge::Worker.new

worker.command("steps") do |args, ctx|
  args["steps"].map do |step|
    begin
      { "ok" => run_step(step, ctx) }
    rescue SnakepitBridge::HostCallError => e
      { "caught" => e.error_type }
    end
  end
end

worker.run
