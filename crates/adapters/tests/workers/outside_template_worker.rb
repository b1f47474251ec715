# frozen_string_literal: true

# A worker for crates/adapters/tests/outside_template_protocol.rs, which
# starts it as a preload template itself (SNAKEPIT_PRELOAD=1, fd 0 one end
# of a SOCK_SEQPACKET socket pair) and plays the pool.
#
# From the template's environment (read at load):
# - OUTSIDE_TEMPLATE_THREAD=1 starts a thread that never ends;
# - OUTSIDE_TEMPLATE_SPAWN=1 starts a short-lived helper process
#   (`sleep 0.3`) and prints "outside_template: spawned <pid>" to stdout
#   (the template's log).
#
# From a fork request's environment (read in the forked worker):
# - OUTSIDE_TEMPLATE_EXIT=N: the first after_fork hook exits at once with
#   status N.
#
# The first after_fork hook records what it saw (its process, the worker
# id, OUTSIDE_TEMPLATE_VAR, SNAKEPIT_PRELOAD) and writes
# "outside_template: hook ran" to stderr; `state` returns that record and
# the named variables of the environment as they are when it is called.
require "snakepit_bridge"

OUTSIDE_THREAD = Thread.new { sleep } if ENV["OUTSIDE_TEMPLATE_THREAD"] == "1"

# Registered at load, so in the template: it must never run there.
at_exit do
  $stdout.puts "outside_template: at_exit ran in #{Process.pid}"
  $stdout.flush
end

if ENV["OUTSIDE_TEMPLATE_SPAWN"] == "1"
  helper = Process.spawn("sleep", "0.3")
  $stdout.puts "outside_template: spawned #{helper}"
  $stdout.flush
  # The script waits for its helper itself, once it has surely ended (the
  # template must have left it to the script).
  OUTSIDE_WAITER = Thread.new do
    sleep 1
    begin
      _, status = Process.wait2(helper)
      $stdout.puts "outside_template: the script reaped its helper, status #{status.exitstatus}"
    rescue Errno::ECHILD
      $stdout.puts "outside_template: the script's helper was reaped by someone else"
    end
    $stdout.flush
  end
end

worker = SnakepitBridge::Worker.new
SEEN = {} # rubocop:disable Style/MutableConstant -- filled by the hook

worker.after_fork do |w|
  code = ENV["OUTSIDE_TEMPLATE_EXIT"]
  exit!(Integer(code)) if code

  SEEN.merge!(
    "pid" => Process.pid,
    "worker_id" => w.worker_id,
    "var" => ENV["OUTSIDE_TEMPLATE_VAR"],
    "preload" => ENV["SNAKEPIT_PRELOAD"]
  )
  $stderr.puts "outside_template: hook ran"
  $stderr.flush
end

worker.command("state") do |args, _ctx|
  {
    "pid" => Process.pid,
    "hook" => SEEN,
    "env" => (args["names"] || []).to_h { |name| [name, ENV[name]] }
  }
end

worker.run
