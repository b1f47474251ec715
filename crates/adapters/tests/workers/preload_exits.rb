# A worker for crates/adapters/tests/preload_exits.rs: threads and exits of
# preloaded Ruby workers, as docs/preload.md says. It appends a line
# "<tag> <pid>" to $PRELOAD_EXITS_LOG for each thing that happens: "hook"
# when the after-fork hook runs, "worker-at_exit" and "template-at_exit"
# when the at_exit handlers registered by the hook and at load run.
# PRELOAD_EXITS_TEMPLATE_THREAD: the top-level code (the template) starts a
# thread named "template-loader" that never ends.
require "snakepit_bridge"

LOG = ENV.fetch("PRELOAD_EXITS_LOG")

def note(tag)
  File.open(LOG, "a") { |f| f.puts("#{tag} #{Process.pid}") }
end

at_exit { note("template-at_exit") }
Thread.new { sleep }.name = "template-loader" if ENV["PRELOAD_EXITS_TEMPLATE_THREAD"]

worker = SnakepitBridge::Worker.new
worker.after_fork do
  note("hook")
  at_exit { note("worker-at_exit") }
end

# The threads this process has: Ruby's view and the kernel's.
worker.command("threads") do |args, _ctx|
  sleep((args["ms"] || 0) / 1000.0)
  {
    "pid" => Process.pid,
    "names" => Thread.list.map { |t| t.name || "" }.sort,
    "tasks" => Dir.children("/proc/self/task").size,
  }
end

worker.run
