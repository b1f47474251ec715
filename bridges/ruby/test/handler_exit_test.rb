# frozen_string_literal: true

require_relative "test_helper"
require "tmpdir"
require "fileutils"

# README, Errors: "Every exception a handler raises is a failed reply of its
# class, and the worker serves on ... Only leaving the process ends the
# worker: `exit` (which raises `SystemExit`) and `exit!` end it with their
# status, and a `SignalException` that is not an `Interrupt` ... ends it as
# its signal would."
class HandlerExitTest < Minitest::Test
  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"

    worker = SnakepitBridge::Worker.new
    worker.command("ok") { |_args, _ctx| "ok" }
    worker.command("raise_exception") { |_args, _ctx| raise Exception, "bare" }
    worker.command("raise_interrupt") { |_args, _ctx| raise Interrupt, "by hand" }
    worker.command("exit") do |args, _ctx|
      $stderr.puts "leaving by exit"
      exit args.fetch("status")
    end
    worker.command("exit_bang") { |args, _ctx| exit!(args.fetch("status")) }
    worker.command("term") { |_args, _ctx| raise SignalException, "TERM" }
    worker.run
  RUBY

  include ScriptWorkers

  def test_exceptions_other_than_leaving_the_process_are_failed_replies
    worker = spawn_worker
    { "raise_exception" => %w[Exception bare], "raise_interrupt" => ["Interrupt", "by hand"] }.each_with_index do |(command, (type, message)), i|
      reply = worker.call(i + 1, command)
      assert_equal false, reply["success"], reply.inspect
      assert_equal [type, message], [reply["error"]["type"], reply["error"]["message"]], reply.inspect
    end
    assert_equal "ok", worker.call(3, "ok")["result"]
  end

  def test_exit_and_exit_bang_end_the_worker_with_their_status
    { "exit" => 3, "exit_bang" => 4 }.each do |command, status|
      worker = spawn_worker
      worker.request(1, command, { "status" => status })
      ended = worker.wait
      refute_nil ended, "#{command}: the worker did not end"
      assert_equal status, ended.exitstatus, "#{command}: #{worker.stderr}"
      assert_equal "", worker.drain_stdout(0.1), "#{command}: no reply"
    end
  end

  def test_a_signal_exception_other_than_interrupt_ends_the_worker_by_its_signal
    worker = spawn_worker
    worker.request(1, "term")
    ended = worker.wait
    refute_nil ended, "the worker did not end"
    assert_equal Signal.list["TERM"], ended.termsig, worker.stderr
  end
end
