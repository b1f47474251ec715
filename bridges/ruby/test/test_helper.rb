# frozen_string_literal: true

$LOAD_PATH.unshift(File.expand_path("../lib", __dir__))
require "minitest/autorun"
require "rbconfig"
require "snakepit_bridge"

module TestPaths
  BRIDGE_DIR = File.expand_path("..", __dir__)
  VECTORS = File.expand_path("../../../tests/vectors/frames.json", __dir__)
  GENERIC_WORKER = File.join(BRIDGE_DIR, "generic_worker.rb")
  EXAMPLE_WORKER = File.join(__dir__, "example_worker.rb")
end

# A worker running as a child process, spoken to the way the pool does.
class WorkerProcess
  attr_reader :pid, :hello

  def initialize(script, codec: "json", env: {}, ruby_args: [], expect_hello: true)
    @codec = SnakepitBridge::Wire.codec(codec)
    child_in, @to_worker = IO.pipe
    @from_worker, child_out = IO.pipe
    err_r, child_err = IO.pipe
    # RUBYLIB is the bridge directory, as the pool sets it.
    full_env = { "SNAKEPIT_CODEC" => codec, "RUBYLIB" => TestPaths::BRIDGE_DIR, "SNAKEPIT_WORKER_ID" => nil }.merge(env)
    @pid = Process.spawn(full_env, RbConfig.ruby, *ruby_args, script, "--mode", "pool-worker",
                         "--snakepit-run-id", "test",
                         in: child_in, out: child_out, err: child_err)
    [child_in, child_out, child_err].each(&:close)
    attach(err_r, expect_hello: expect_hello)
  end

  private

  # Starts reading the worker's stderr (+err_r+) and, unless told not to,
  # receives its hello. @to_worker and @from_worker are the frame pipes.
  def attach(err_r, expect_hello: true)
    @to_worker.binmode
    @from_worker.binmode
    @stderr = +""
    @stderr_lock = Mutex.new
    @stderr_thread = Thread.new do
      while (data = err_r.readpartial(4096) rescue nil)
        @stderr_lock.synchronize { @stderr << data }
      end
    end
    @hello = recv if expect_hello
  end

  public

  def stderr
    @stderr_lock.synchronize { @stderr.dup }
  end

  # The stderr reader is a thread of its own: text the worker wrote before a
  # reply may not be read yet when the reply arrives, so wait for it.
  def stderr_until(text, timeout: 5)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      seen = stderr
      return seen if seen.include?(text) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
  end

  def send_message(message)
    send_raw(SnakepitBridge::Wire.frame(@codec.encode(message)))
  end

  def send_raw(bytes)
    @to_worker.write(bytes)
    @to_worker.flush
  end

  def request(id, command, args = {}, **extra)
    send_message({ "id" => id, "command" => command, "args" => args,
                   "timestamp" => "2026-11-27T12:24:04.051023Z" }.merge(extra.transform_keys(&:to_s)))
  end

  # Sends a request and returns its final response (chunks are skipped).
  def call(id, command, args = {}, **extra)
    request(id, command, args, **extra)
    loop do
      message = recv
      return message if message["type"].nil? && message["id"] == id
    end
  end

  # The next frame, decoded. A frame that does not come whole within
  # +timeout+ (a broken stream: its length announces more than follows)
  # fails the test instead of hanging it.
  def recv(timeout = 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    header = read_within(4, deadline, timeout)
    raise "worker closed stdout; stderr:\n#{stderr}" if header.nil?

    @codec.decode(read_within(header.unpack1("N"), deadline, timeout) || "")
  end

  # +size+ bytes of stdout, or nil at its end before the first; raises if
  # they are not all there by +deadline+.
  def read_within(size, deadline, timeout)
    data = "".b
    while data.bytesize < size
      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      unless left.positive? && IO.select([@from_worker], nil, nil, left)
        raise "no whole frame from the worker within #{timeout}s (#{data.bytesize} of #{size} bytes); stderr:\n#{stderr}"
      end

      chunk = @from_worker.read_nonblock(size - data.bytesize, exception: false)
      next if chunk == :wait_readable
      return nil if chunk.nil? && data.empty?
      raise "worker closed stdout inside a frame; stderr:\n#{stderr}" if chunk.nil?

      data << chunk
    end
    data
  end

  # Raw stdout bytes still unread, waiting up to +timeout+ for more.
  def drain_stdout(timeout = 0.3)
    data = +""
    while IO.select([@from_worker], nil, nil, timeout)
      chunk = @from_worker.read_nonblock(4096, exception: false)
      break if chunk.nil? || chunk == :wait_readable

      data << chunk
    end
    data
  end

  def signal(name)
    Process.kill(name, @pid)
  rescue Errno::ESRCH
    nil
  end

  # Runs the block while another thread sends the worker SIGINT every
  # +every+ seconds; the block's value.
  def during_sigint_storm(every: 0.0005)
    stop = false
    pinger = Thread.new do
      until stop
        signal("INT")
        sleep every
      end
    end
    yield
  ensure
    stop = true
    pinger&.join
  end

  def close_stdin
    @to_worker.close unless @to_worker.closed?
  end

  # Exit status, or nil if the worker is still running after +timeout+.
  def wait(timeout = 10)
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      _, status = Process.waitpid2(@pid, Process::WNOHANG)
      if status
        @stderr_thread.join(1)
        return status
      end
      return nil if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

      sleep 0.01
    end
  end

  def alive?
    Process.waitpid2(@pid, Process::WNOHANG).nil?
  rescue Errno::ECHILD
    false
  end

  def stop
    close_stdin
    return if wait(5)

    Process.kill("KILL", @pid)
    wait(5)
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end
end

# A test class whose workers run its own SCRIPT (a constant of the class),
# written to a fresh directory; every worker it spawned is stopped after
# each test.
module ScriptWorkers
  def setup
    @dir = Dir.mktmpdir("snakepit-ruby-#{self.class.name.downcase}-")
    @script = File.join(@dir, "worker.rb")
    File.write(@script, self.class::SCRIPT)
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
    FileUtils.remove_entry(@dir)
  end

  def spawn_worker(codec: "json", **options)
    WorkerProcess.new(@script, codec: codec, **options).tap { |w| @workers << w }
  end
end

# Frames written the way the pool writes them, in the test class's +codec+,
# and the replies that come back.
module CodecFrames
  def wire(message)
    SnakepitBridge::Wire.frame(SnakepitBridge::Wire.codec(codec).encode(message))
  end

  def request(id, command, args = {})
    wire({ "id" => id, "command" => command, "args" => args })
  end

  def cancel(id)
    wire({ "type" => "cancel", "id" => id })
  end

  # The next +count+ replies (chunks skipped), in the order they came.
  def replies(worker, count)
    got = []
    while got.size < count
      message = worker.recv
      got << message if message["type"].nil?
    end
    got
  end
end
