# frozen_string_literal: true

require_relative "test_helper"
require "tmpdir"
require "fileutils"

# README, Standard output: `$stdout` writes to stderr (the pool's log)
# through a descriptor of its own, so a handler that closes it (as code
# written for a command-line tool does when it is done) closes neither
# stderr nor the log, and the next request gets a working `$stdout` again.
class UserStdoutTest < Minitest::Test
  SCRIPT = <<~'RUBY'
    require "snakepit_bridge"
    require "stringio"

    worker = SnakepitBridge::Worker.new
    worker.command("print") do |args, ctx|
      puts "puts #{args['text']}"
      print "print #{args['text']}\n"
      $stdout.write("write #{args['text']}\n")
      ctx.logger.info("logger #{args['text']}")
      { "stdout_fd" => $stdout.fileno }
    end
    worker.command("close_stdout") do |_args, _ctx|
      $stdout.close
      $stderr.puts "stderr after the close"
      { "closed" => $stdout.closed?, "stderr_closed" => $stderr.closed?, "STDERR_closed" => STDERR.closed? }
    end
    worker.command("close_then_puts") do |_args, _ctx|
      $stdout.close
      puts "never printed"
      "unreachable"
    end
    worker.command("own_stdout") do |_args, _ctx|
      $stdout = StringIO.new
      $stdout.close
      "replaced"
    end
    worker.command("stdout_class") { |_args, _ctx| $stdout.class.name }
    worker.run
  RUBY

  include ScriptWorkers

  def ok(reply, id)
    assert_equal id, reply["id"], reply.inspect
    assert_equal true, reply["success"], reply.inspect
    reply["result"]
  end

  def test_closing_stdout_in_a_handler_leaves_stderr_and_later_prints_alone
    worker = spawn_worker
    ok(worker.call(1, "print", { "text" => "before-close" }), 1)
    assert_equal({ "closed" => true, "stderr_closed" => false, "STDERR_closed" => false },
                 ok(worker.call(2, "close_stdout"), 2))
    result = ok(worker.call(3, "print", { "text" => "after-close" }), 3)
    refute_includes [1, 2], result["stdout_fd"], "a descriptor of its own"
    # The same again: each close is of that request's $stdout only.
    ok(worker.call(4, "close_stdout"), 4)
    ok(worker.call(5, "print", { "text" => "after-second-close" }), 5)
    seen = worker.stderr_until("logger after-second-close")
    %w[before-close after-close after-second-close].each do |text|
      %w[puts print write].each { |how| assert_includes seen.lines, "#{how} #{text}\n", seen }
      assert_match(/INFO .*logger #{text}$/, seen)
    end
    assert_includes seen.lines, "stderr after the close\n"
    assert_equal "", worker.drain_stdout(0.1), "nothing but frames on stdout"
  end

  def test_printing_after_the_close_in_the_same_handler_is_its_failed_reply
    worker = spawn_worker
    reply = worker.call(1, "close_then_puts")
    assert_equal false, reply["success"], reply.inspect
    assert_equal "IOError", reply["error"]["type"], reply.inspect
    ok(worker.call(2, "print", { "text" => "next-call" }), 2)
    assert_includes worker.stderr_until("puts next-call").lines, "puts next-call\n"
  end

  def test_a_stdout_of_the_users_own_is_left_as_it_is
    worker = spawn_worker
    assert_equal "replaced", ok(worker.call(1, "own_stdout"), 1)
    assert_equal "StringIO", ok(worker.call(2, "stdout_class"), 2)
  end
end
