# frozen_string_literal: true

require_relative "test_helper"
require "json"
require "socket"
require "stringio"

PRELOAD_WORKER = File.join(__dir__, "preload_worker.rb")

# A preload template (docs/preload.md) started the way the pool starts one:
# fd 0 is one end of a SOCK_SEQPACKET pair, stdout and stderr go to a log.
# The test is the pool: it sends fork requests and reads the template's
# messages.
class TemplateProcess
  attr_reader :pid, :ready

  def initialize(codec: "json", env: {})
    @codec = codec
    @socket, child_end = UNIXSocket.pair(:SEQPACKET)
    log_r, log_w = IO.pipe
    full_env = { "SNAKEPIT_PRELOAD" => "1", "SNAKEPIT_CODEC" => codec, "RUBYLIB" => TestPaths::BRIDGE_DIR,
                 "SNAKEPIT_WORKER_ID" => nil }.merge(env)
    @pid = Process.spawn(full_env, RbConfig.ruby, PRELOAD_WORKER, "--mode", "pool-worker",
                         in: child_end, out: log_w, err: log_w)
    [child_end, log_w].each(&:close)
    @waiter = Thread.new { Process.wait2(@pid)[1] }
    @log = +""
    @log_lock = Mutex.new
    @log_thread = Thread.new do
      while (data = log_r.readpartial(4096) rescue nil)
        @log_lock.synchronize { @log << data }
      end
    end
    @backlog = []
    @ready = next_message
  end

  # Everything the template wrote to stdout and stderr so far.
  def log
    @log_lock.synchronize { @log.dup }
  end

  # The log once it holds every one of +texts+, or as it is after +secs+
  # seconds: the thread that copies it from the pipe may lag behind what
  # the template wrote (on a loaded machine it had copied nothing yet).
  def log_with(*texts, secs: 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + secs
    loop do
      current = log
      return current if texts.all? { |t| current.include?(t) }
      return current if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.02
    end
  end

  # The whole log, once the template has exited.
  def final_log
    @log_thread.join(10)
    log
  end

  # Sends one datagram: +message+ (a Hash, or raw text) with +ios+ attached.
  def send_message(message, ios = [])
    data = message.is_a?(String) ? message : JSON.generate(message)
    if ios.empty?
      @socket.sendmsg(data)
    else
      @socket.sendmsg(data, 0, nil, Socket::AncillaryData.unix_rights(*ios))
    end
  end

  def fork_request(id, env, ios)
    send_message({ "op" => "fork", "id" => id, "env" => env }, ios)
  end

  # The first message (in arrival order) for which the block is true;
  # others are kept for later calls.
  def message(timeout = 10, &wanted)
    found = @backlog.find(&wanted)
    return @backlog.delete_at(@backlog.index(found)) if found

    loop do
      received = next_message(timeout)
      return received if wanted.call(received)

      @backlog << received
    end
  end

  # Messages received but not asked for yet.
  def unclaimed
    @backlog.dup
  end

  def fork_reply(id)
    message { |m| %w[forked fork_failed].include?(m["op"]) && m["id"] == id }
  end

  # The raw wait status the template reported for +pid+.
  def exit_status_of(pid)
    message { |m| m["op"] == "exited" && m["pid"] == pid }["status"]
  end

  def close_socket
    @socket.close unless @socket.closed?
  end

  # The template's Process::Status, or nil if it still runs after +timeout+.
  def wait(timeout = 10)
    @waiter.join(timeout)&.value
  end

  def stop
    close_socket
    return if wait(5)

    Process.kill("KILL", @pid)
    wait(5)
  rescue Errno::ESRCH
    nil
  end

  private

  def next_message(timeout = 10)
    unless IO.select([@socket], nil, nil, timeout)
      raise "no message from the template within #{timeout}s; its log:\n#{log}"
    end

    data, = @socket.recvmsg(65_536)
    raise "the template closed its socket; its log:\n#{final_log}" if data.empty?

    JSON.parse(data)
  end
end

# A worker forked by a TemplateProcess, spoken to over the pipes the test
# made for it. It is the template's child, not ours: the template reports
# its exit.
class ForkedWorker < WorkerProcess
  attr_reader :reply

  def initialize(template, id, codec: "json", env: {})
    @codec = SnakepitBridge::Wire.codec(codec)
    @template = template
    child_in, @to_worker = IO.pipe
    @from_worker, child_out = IO.pipe
    err_r, child_err = IO.pipe
    template.fork_request(id, { "SNAKEPIT_CODEC" => codec }.merge(env), [child_in, child_out, child_err])
    [child_in, child_out, child_err].each(&:close)
    @reply = template.fork_reply(id)
    raise "fork request #{id} failed: #{@reply.inspect}; template log:\n#{template.log}" unless @reply["op"] == "forked"

    @pid = @reply["pid"]
    attach(err_r, expect_hello: false)
  end

  def receive_hello
    @hello = recv
  end

  # The worker's stderr, complete once it has exited.
  def final_stderr
    @stderr_thread.join(10)
    stderr
  end

  # Raw wait status reported by the template.
  def exit_status
    @template.exit_status_of(@pid)
  end

  # True once the worker's stdout reached end of file (it exited), reading
  # and dropping whatever frames were left.
  def stdout_closed?(timeout = 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      return false if left <= 0 || !IO.select([@from_worker], nil, nil, left)
      return true if @from_worker.read_nonblock(4096, exception: false).nil?
    end
  end

  def stop
    close_stdin
    return if stdout_closed?(5)

    Process.kill("KILL", @pid)
  rescue Errno::ESRCH
    nil
  end
end

# Raw wait status helpers (the template sends Process::Status#to_i).
module WaitStatus
  module_function

  def exited_with(status)
    (status & 0x7f).zero? ? status >> 8 : nil
  end

  def killed_by(status)
    signal = status & 0x7f
    signal.zero? || signal == 0x7f ? nil : signal
  end
end

# Behaviour that depends on the codec, run once per codec.
module PreloadCodecTests
  def setup
    @template = TemplateProcess.new(codec: codec)
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
    @template.stop
  end

  def fork_worker(id, env = {})
    ForkedWorker.new(@template, id, codec: codec, env: env).tap { |w| @workers << w }
  end

  def test_forked_worker_serves_ping_and_echo
    ready = @template.ready
    assert_equal({ "op" => "ready", "pid" => @template.pid, "threads" => 1 }, ready)

    worker = fork_worker(1, { "SNAKEPIT_WORKER_ID" => "pool_worker_1", "PRELOAD_TEST_EXTRA" => "from the request" })
    refute_equal @template.pid, worker.pid
    hello = worker.receive_hello
    assert_equal "hello", hello["type"]
    assert_equal worker.pid, hello["pid"]

    ping = worker.call(1, "ping", { "initialization" => true, "worker_id" => "pool_worker_1" })
    assert_equal true, ping["success"], ping.inspect
    assert_equal "ok", ping["result"]["status"]
    assert_equal worker.pid, ping["result"]["pid"]
    assert_equal "pool_worker_1", ping["result"]["worker_id"]
    assert_equal 1, ping["result"]["requests_handled"]

    echo = worker.call(2, "echo", { "message" => "h\u00e9llo \u2713", "n" => [1, 2.5, nil, true] })
    assert_equal({ "message" => "h\u00e9llo \u2713", "n" => [1, 2.5, nil, true] }, echo["result"]["echoed"])

    state = worker.call(3, "state")["result"]
    assert_equal worker.pid, state["pid"]
    assert_equal worker.pid, state["pgid"], "the worker leads its own process group"
    assert_equal worker.pid, Process.getpgid(worker.pid)
    assert_equal @template.pid, state["loaded_in"], "module-level code ran in the template"
    assert_equal ["first in #{worker.pid}", "second for pool_worker_1"], state["hooks"]
    assert_nil state["preload_env"], "SNAKEPIT_PRELOAD is removed in the worker"
    assert_equal "from the request", state["extra_env"]

    worker.close_stdin
    assert_equal 0, WaitStatus.exited_with(worker.exit_status)
    stderr = worker.final_stderr
    assert_includes stderr, "after_fork hook ran in pid #{worker.pid}"
    refute_includes stderr, "run returned", "a forked worker never returns into the script"
    refute_includes stderr, "snakepit:", "no fork warnings for a template without threads or sockets"
    refute_includes @template.log, "after_fork hook ran", "hooks do not run in the template"
  end

  def test_two_workers_concurrently_from_one_module_load
    first = fork_worker(1, { "SNAKEPIT_WORKER_ID" => "w1" })
    second = fork_worker(2, { "SNAKEPIT_WORKER_ID" => "w2" })
    refute_equal first.pid, second.pid
    [first, second].each(&:receive_hello)

    # Both are in flight at once; the second answers first.
    first.request(10, "state")
    second.request(20, "state")
    second_state = second.recv
    first_state = first.recv
    assert_equal [20, second.pid, "w2"], [second_state["id"], second_state["result"]["pid"], second_state["result"]["worker_id"]]
    assert_equal [10, first.pid, "w1"], [first_state["id"], first_state["result"]["pid"], first_state["result"]["worker_id"]]
    refute_equal first_state["result"]["rand"], second_state["result"]["rand"], "each worker has its own random seed"
    assert_equal "ok", first.call(11, "echo", { "x" => 1 })["result"]["status"]
    assert_equal "ok", second.call(21, "echo", { "x" => 2 })["result"]["status"]

    [first, second].each(&:close_stdin)
    assert_equal [0, 0], [first, second].map { |w| WaitStatus.exited_with(w.exit_status) }
    @template.close_socket
    assert_equal 0, @template.wait.exitstatus
    log = @template.final_log
    assert_equal 1, log.scan("module-level code ran").size, log
    refute_includes log, "run returned"
  end
end

class PreloadJsonTest < Minitest::Test
  include PreloadCodecTests

  def codec = "json"
end

class PreloadMsgpackTest < Minitest::Test
  include PreloadCodecTests

  def codec = "msgpack"
end

# The template's lifecycle and its handling of bad input.
class PreloadTemplateTest < Minitest::Test
  def setup
    @templates = []
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
    @templates.each(&:stop)
  end

  def start_template(env = {})
    TemplateProcess.new(env: env).tap { |t| @templates << t }
  end

  def fork_worker(template, id, env = {})
    ForkedWorker.new(template, id, env: env).tap { |w| @workers << w }
  end

  def test_sigkilled_worker_is_reported_with_its_signal
    template = start_template
    worker = fork_worker(template, 1)
    worker.receive_hello
    Process.kill("KILL", worker.pid)
    status = worker.exit_status
    assert_equal Signal.list["KILL"], WaitStatus.killed_by(status), "raw status #{status}"
    assert_equal({ "op" => "ready", "pid" => template.pid, "threads" => 1 }, template.ready)
    assert_empty template.unclaimed
  end

  def test_sigterm_stops_a_forked_worker_with_status_zero
    template = start_template
    worker = fork_worker(template, 1)
    worker.receive_hello
    assert_equal "ok", worker.call(1, "ping")["result"]["status"]
    Process.kill("TERM", worker.pid)
    assert_equal 0, WaitStatus.exited_with(worker.exit_status)
    refute_includes worker.final_stderr, "run returned"
  end

  def test_template_exits_zero_on_socket_close_and_workers_keep_serving
    template = start_template
    worker = fork_worker(template, 1)
    worker.receive_hello
    template.close_socket
    status = template.wait
    assert_equal 0, status.exitstatus, template.final_log
    assert_equal "ok", worker.call(1, "ping")["result"]["status"], "the worker outlives its template"
    assert_equal "ok", worker.call(2, "echo", { "after" => "template" })["result"]["status"]
    worker.close_stdin
    assert worker.stdout_closed?, "the worker exits when its stdin closes"
    refute_includes worker.final_stderr, "run returned"
  end

  def test_template_threads_and_sockets_are_warned_about_in_each_worker
    template = start_template({ "PRELOAD_TEST_LEAKS" => "1" })
    assert_equal 2, template.ready["threads"]
    worker = fork_worker(template, 1)
    worker.receive_hello
    assert_equal 1, worker.call(1, "state")["result"]["threads"]
    # A worker that dies without flushing (a crash) has still written them.
    worker.request(2, "crash")
    assert_equal 3, WaitStatus.exited_with(worker.exit_status)
    stderr = worker.final_stderr
    assert_includes stderr, "snakepit: the template had 2 threads when it forked; threads do not survive " \
                            "a fork (start them in a worker.after_fork hook)"
    assert_match(/snakepit: the template had 2 sockets open when it forked \(fd \d+, \d+\).*after_fork hook/, stderr)
    refute_includes template.log, "snakepit: the template had", "warnings go to the worker, not the template"
  end

  def test_failing_after_fork_hook_exits_one_with_its_backtrace
    template = start_template
    worker = fork_worker(template, 1, { "PRELOAD_TEST_FAIL_HOOK" => "1" })
    assert_equal 1, WaitStatus.exited_with(worker.exit_status)
    assert worker.stdout_closed?
    stderr = worker.final_stderr
    assert_includes stderr, "an after_fork hook failed; exiting with status 1"
    assert_includes stderr, "hook failed on purpose (RuntimeError)"
    assert_match(/preload_worker\.rb:\d+/, stderr, "the backtrace names the hook's line")
    refute_includes stderr, "run returned"
    # The template is unaffected.
    other = fork_worker(template, 2)
    assert_equal "hello", other.receive_hello["type"]
  end

  def test_bad_messages_are_refused_and_the_template_survives
    template = start_template
    probes = [] # read ends whose write end went to the template only
    send_with = lambda do |message, count|
      ios = Array.new(count) do
        r, w = IO.pipe
        probes << r
        w
      end
      template.send_message(message, ios)
      ios.each(&:close)
    end

    template.send_message("this is not json")
    template.send_message("[1, 2]")
    send_with.call({ "op" => "bogus" }, 3)
    send_with.call({ "op" => "fork", "env" => {} }, 3) # no id
    send_with.call({ "op" => "fork", "id" => 7, "env" => {} }, 2)
    send_with.call({ "op" => "fork", "id" => 8, "env" => {} }, 4)
    template.send_message({ "op" => "fork", "id" => 9, "env" => {} })
    send_with.call({ "op" => "fork", "id" => 10, "env" => { "A" => 1 } }, 3)
    send_with.call({ "op" => "fork", "id" => 11, "env" => ["A"] }, 3)
    send_with.call({ "op" => "fork", "id" => 12, "env" => { "A=B" => "c" } }, 3)

    worker = fork_worker(template, 13)
    assert_equal "hello", worker.receive_hello["type"]
    assert_equal "ok", worker.call(1, "ping")["result"]["status"]

    # Every bad fork request got a fork_failed naming the problem, in order,
    # before the good one was served.
    failures = template.unclaimed
    assert_equal [7, 8, 9, 10, 11, 12], failures.map { |m| m["id"] }
    assert(failures.all? { |m| m["op"] == "fork_failed" })
    assert_includes failures[0]["error"], "exactly 3 descriptors"
    assert_includes failures[0]["error"], "got 2"
    assert_includes failures[1]["error"], "got 4"
    assert_includes failures[2]["error"], "got 0"
    assert_includes failures[3]["error"], "env value of A must be a string"
    assert_includes failures[4]["error"], "env must be an object"
    assert_includes failures[5]["error"], "invalid variable name"

    # The template closed every descriptor it was sent: each pipe is at EOF.
    probes.each_with_index do |r, i|
      assert_nil r.read_nonblock(1, exception: false), "descriptor #{i} is still open in the template"
    end

    expected = ["not valid JSON", "not a JSON object", "unknown op \"bogus\"", "without an integer id"]
    log = template.log_with(*expected)
    assert_includes log, "not valid JSON"
    assert_includes log, "not a JSON object"
    assert_includes log, "unknown op \"bogus\""
    assert_includes log, "without an integer id"
    assert_nil template.wait(0), "the template is still running"
  end

  def test_template_needs_a_socket_on_stdin
    worker = WorkerProcess.new(PRELOAD_WORKER, env: { "SNAKEPIT_PRELOAD" => "1" }, expect_hello: false)
    status = worker.wait
    assert_equal 1, status.exitstatus
    assert_includes worker.stderr, "SNAKEPIT_PRELOAD=1 but stdin is not a socket"
  end
end

# after_fork without preloading: the same script works started directly.
class AfterForkDirectTest < Minitest::Test
  def teardown
    @worker&.stop
  end

  def test_hooks_run_in_a_directly_started_worker
    @worker = WorkerProcess.new(PRELOAD_WORKER, env: { "SNAKEPIT_WORKER_ID" => "direct" })
    state = @worker.call(1, "state")["result"]
    assert_equal @worker.pid, state["loaded_in"]
    assert_equal ["first in #{@worker.pid}", "second for direct"], state["hooks"]
    @worker.close_stdin
    assert_equal 0, @worker.wait.exitstatus
    assert_includes @worker.stderr, "run returned", "a directly started worker returns from run as before"
  end

  def test_failing_hook_exits_one_before_hello
    @worker = WorkerProcess.new(PRELOAD_WORKER, env: { "PRELOAD_TEST_FAIL_HOOK" => "1" }, expect_hello: false)
    assert_equal 1, @worker.wait.exitstatus
    assert_includes @worker.stderr, "an after_fork hook failed; exiting with status 1"
    assert_includes @worker.stderr, "hook failed on purpose (RuntimeError)"
    assert_equal "", @worker.drain_stdout(0), "no hello from a worker whose hook failed"
  end

  def test_hooks_run_once_in_order_before_hello
    to_worker_r, to_worker = IO.pipe
    from_worker, from_worker_w = IO.pipe
    worker = SnakepitBridge::Worker.new(codec: "json", input: to_worker_r, output: from_worker_w)
    calls = []
    worker.after_fork { calls << [:block, IO.select([from_worker], nil, nil, 0) ? :after_hello : :before_hello] }
    worker.after_fork { |w| calls << [:with_worker, w.equal?(worker)] }
    worker.after_fork(-> { calls << [:lambda] })
    thread = Thread.new { worker.run }
    assert_equal "hello", JSON.parse(SnakepitBridge::Wire.read_frame(from_worker))["type"]
    to_worker.close
    thread.join(5)
    assert_equal [[:block, :before_hello], [:with_worker, true], [:lambda]], calls
    worker.run # a second run in the same process does not run them again
    assert_equal 3, calls.size
  ensure
    [to_worker_r, to_worker, from_worker, from_worker_w].each { |io| io&.close unless io&.closed? }
  end

  def test_after_fork_needs_a_callable
    worker = SnakepitBridge::Worker.new(codec: "json", input: StringIO.new, output: StringIO.new)
    assert_raises(ArgumentError) { worker.after_fork }
  end
end
