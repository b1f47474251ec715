# bridges/ruby/README.md, Preloading: its after_fork example, with the two
# names it leaves to the reader (DB, report_metrics) defined, for
# outside_ruby_readme.rs.
require "snakepit_bridge"

# What the example connects in each worker process.
module DB
  @pid = nil
  class << self
    attr_reader :pid

    def connect
      @pid = Process.pid
    end
  end
end

def report_metrics
  loop { sleep 0.05 }
end

# A socket the template opens while loading (README: "Threads, sockets and
# connections do not survive a fork ... A forked worker writes a warning to
# its stderr when the template had ... sockets open, when it forked").
if ENV["ORR_TEMPLATE_SOCKET"]
  require "socket"
  PAIR = UNIXSocket.pair
end

worker = SnakepitBridge::Worker.new

# The README's lines, as written:
worker.after_fork { DB.connect; Thread.new { report_metrics } }
worker.after_fork { |w| w.logger.info("worker #{w.worker_id} is up") }

# Hooks of other shapes: a lambda taking nothing, a Method taking the worker.
HOOKS = []
worker.after_fork(-> { HOOKS << "lambda0" })
def method_hook(w)
  HOOKS << "method1:#{w.class}"
end
worker.after_fork(method(:method_hook))
worker.after_fork { raise "hook failed on purpose: ORR_FAILING_HOOK" } if ENV["ORR_FAILING_HOOK"]

# An object answering #call (as Worker#after_fork accepts) that takes no
# argument: it should not be given the worker.
class NoArgHook
  def call
    HOOKS << "object0"
  end
end
worker.after_fork(NoArgHook.new) if ENV["ORR_OBJECT_HOOK"]

worker.command("state") do |_a, ctx|
  threads = Thread.list.reject { |t| t == Thread.main }.map(&:alive?)
  { "pid" => Process.pid, "db_pid" => DB.pid, "threads" => threads, "hooks" => HOOKS,
    "worker_id" => ctx.worker_id }
end
worker.run
