#!/usr/bin/env ruby
# frozen_string_literal: true

# A worker script for the preload tests: it reports where its module-level
# code and its after_fork hooks ran. Started with SNAKEPIT_PRELOAD=1 it is a
# template; without it, an ordinary worker.
require "snakepit_bridge"
require "socket"

$stderr.puts "preload_worker: module-level code ran in pid #{Process.pid}"
LOADED_IN = Process.pid
HOOKS = [] # rubocop:disable Style/MutableConstant -- filled by the hooks

# What the fork warnings are about: a thread and a socket made by the template.
if ENV["PRELOAD_TEST_LEAKS"] == "1"
  LEAKED_THREAD = Thread.new { sleep }
  LEAKED_SOCKETS = UNIXSocket.pair
end

worker = SnakepitBridge::Worker.new
SnakepitBridge::Generic.register(worker)

worker.after_fork do
  $stderr.puts "preload_worker: after_fork hook ran in pid #{Process.pid}"
  HOOKS << "first in #{Process.pid}"
end
worker.after_fork do |w|
  # The environment of the fork request is applied before the hooks run.
  raise "hook failed on purpose" if ENV["PRELOAD_TEST_FAIL_HOOK"] == "1"

  HOOKS << "second for #{w.worker_id}"
end

worker.command("state") do |_args, ctx|
  {
    "pid" => Process.pid,
    "pgid" => Process.getpgrp,
    "loaded_in" => LOADED_IN,
    "hooks" => HOOKS,
    "worker_id" => ctx.worker_id,
    "preload_env" => ENV["SNAKEPIT_PRELOAD"],
    "extra_env" => ENV["PRELOAD_TEST_EXTRA"],
    "threads" => Thread.list.size,
    "rand" => rand
  }
end

# Dies without flushing anything: what the worker wrote before must already
# be in its stderr pipe.
worker.command("crash") { |_args, _ctx| exit!(3) }

worker.run
$stderr.puts "preload_worker: run returned in pid #{Process.pid}"
