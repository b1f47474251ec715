# frozen_string_literal: true

require "json"
require "socket"

module SnakepitBridge
  # The preload template (docs/preload.md, "The template protocol"): with
  # SNAKEPIT_PRELOAD=1, Worker#run does not serve; it forks a worker for
  # each request of the pool, which arrives on a SOCK_SEQPACKET socket on fd
  # 0 with the worker's three stdio descriptors attached.
  module Preload
    ENV_VAR = "SNAKEPIT_PRELOAD"
    # Longest message either side sends (one JSON object per datagram).
    MAX_MESSAGE = 65_536
    # Control buffer: room for far more than the three descriptors of a
    # fork request, so that a request carrying too many is seen and refused
    # (the kernel closes whatever does not fit).
    CONTROL_LEN = 1024
    STDIO_FDS = 3

    module_function

    # True when the pool started this process as a template.
    def requested?
      ENV[ENV_VAR] == "1"
    end

    # The pool's socket, moved from fd 0 to a close-on-exec descriptor (so
    # that processes the script starts do not hold it, and nothing reads it
    # by accident); fd 0 then reads /dev/null. Done once per process.
    def socket
      @socket ||= begin
        unless STDIN.stat.socket?
          raise Error, "#{ENV_VAR}=1 but stdin is not a socket: a preload template is started by a " \
                       "Snakepit pool with preloading on, not by hand"
        end
        fd0 = Socket.for_fd(0)
        fd0.autoclose = false
        type = fd0.getsockopt(:SOCKET, :TYPE).int
        unless type == Socket::SOCK_SEQPACKET
          raise Error, "#{ENV_VAR}=1 but stdin is not a SOCK_SEQPACKET socket (type #{type})"
        end

        moved = fd0.dup # close-on-exec, above 2
        STDIN.reopen(File::NULL)
        moved
      end
    end

    # Runs the template loop for +worker+ until the pool closes the socket,
    # then exits the process with status 0. Never returns.
    def run_template(worker)
      Template.new(worker, socket).run
    end

    # The template loop. One thread: it waits on the pool's socket and on a
    # self-pipe written by the SIGCHLD handler.
    class Template
      def initialize(worker, socket)
        @worker = worker
        @socket = socket
        @children = {} # pid => fork request id, for workers not yet reaped
      end

      def run
        @wake_r, @wake_w = IO.pipe
        Signal.trap("CHLD") { @wake_w.write_nonblock("!", exception: false) }
        # Ruby 3.3+: a full GC and compaction now, so the workers share the
        # loaded heap instead of each copying the pages a later GC touches.
        Process.warmup if Process.respond_to?(:warmup)
        send_message({ "op" => "ready", "pid" => Process.pid, "threads" => thread_count })
        loop do
          readable, = IO.select([@socket, @wake_r])
          reap if readable.include?(@wake_r)
          break if readable.include?(@socket) && !serve_message
        end
        # End of the socket: the pool stops the workers itself. `exit!`:
        # the script's at_exit handlers were meant for one process, not for
        # the template of many (and `exit` would run them here).
        flush_stdio
        exit!(0)
      end

      private

      # Handles one datagram; false at end of file.
      def serve_message
        data, _addr, flags, *controls = @socket.recvmsg(MAX_MESSAGE, 0, CONTROL_LEN, scm_rights: true)
        ios = controls.select { |c| c.cmsg_is?(:SOCKET, :RIGHTS) }.flat_map(&:unix_rights)
        return false if data.empty? && ios.empty?

        handle(data, flags, ios)
        true
      rescue Errno::ECONNRESET
        false
      rescue SystemCallError => e
        log("reading the pool's socket failed (#{e.message}); exiting")
        false
      end

      def handle(data, flags, ios)
        message = parse(data, flags)
        if message.nil?
          close_all(ios)
        elsif message["op"] == "fork"
          serve_fork(message, ios, flags)
        else
          log("ignoring a message with unknown op #{message['op'].inspect}")
          close_all(ios)
        end
      rescue StandardError => e
        # Bad input never ends the template.
        close_all(ios)
        log("a message from the pool failed: #{e.full_message(highlight: false, order: :top)}")
      end

      # The message as a Hash, or nil (logged) when it is not a JSON object.
      def parse(data, flags)
        if flags.anybits?(Socket::MSG_TRUNC)
          log("ignoring a message longer than #{MAX_MESSAGE} bytes")
          return nil
        end
        text = data.dup.force_encoding(Encoding::UTF_8)
        message = text.valid_encoding? ? JSON.parse(text) : nil
        return message if message.is_a?(Hash)

        log("ignoring a message that is not a JSON object: #{data[0, 200].inspect}")
        nil
      rescue JSON::ParserError => e
        log("ignoring a message that is not valid JSON (#{e.message[0, 200]}): #{data[0, 200].inspect}")
        nil
      end

      def serve_fork(message, ios, flags)
        id = message["id"]
        unless id.is_a?(Integer)
          log("ignoring a fork request without an integer id: #{message.inspect[0, 200]}")
          return close_all(ios)
        end
        env = message["env"] || {}
        error = fork_request_error(env, ios, flags)
        return refuse(id, error, ios) if error

        threads = thread_count
        flush_stdio
        begin
          pid = Process.fork
        rescue SystemCallError, NotImplementedError => e
          return refuse(id, "fork failed: #{e.message}", ios)
        end
        become_worker(ios, env, threads) if pid.nil?

        @children[pid] = id
        begin
          Process.setpgid(pid, pid) # the child does it too; whichever runs first wins
        rescue Errno::EACCES, Errno::ESRCH, Errno::EPERM
          nil # it already has its own group, exec'd or is gone: nothing to do
        end
        close_all(ios)
        send_message({ "op" => "forked", "id" => id, "pid" => pid })
      end

      # Why a fork request cannot be served, or nil.
      def fork_request_error(env, ios, flags)
        if flags.anybits?(Socket::MSG_CTRUNC) || ios.size != STDIO_FDS
          return "a fork request needs exactly #{STDIO_FDS} descriptors (stdin, stdout, stderr), " \
                 "got #{flags.anybits?(Socket::MSG_CTRUNC) ? 'more' : ios.size}"
        end
        return "env must be an object of strings, got #{env.class}" unless env.is_a?(Hash)

        env.each do |name, value|
          if name.empty? || name.include?("=") || name.include?("\0")
            return "env has an invalid variable name #{name.inspect}"
          end
          return "env value of #{name} must be a string, got #{value.inspect[0, 100]}" unless value.is_a?(String)
          return "env value of #{name} contains a NUL byte" if value.include?("\0")
        end
        nil
      end

      def refuse(id, error, ios)
        log("fork request #{id} failed: #{error}")
        close_all(ios)
        send_message({ "op" => "fork_failed", "id" => id, "error" => error })
      end

      # In the forked child: becomes a worker of the pool, serves, exits.
      # Never returns into the template's (or the script's) code.
      def become_worker(ios, env, threads)
        status = 1
        begin
          Process.setpgid(0, 0)
          Signal.trap("CHLD", "DEFAULT")
          [@wake_r, @wake_w, @socket].each(&:close)
          STDIN.reopen(ios[0])
          STDOUT.reopen(ios[1])
          STDERR.reopen(ios[2])
          # reopen takes the mode of the IO it copies: stderr must stay
          # unbuffered, or a worker that dies loses its last words.
          STDOUT.sync = true
          STDERR.sync = true
          close_all(ios)
          env.each { |name, value| ENV[name] = value }
          # Last: no env of the request can make this worker a template.
          ENV.delete(ENV_VAR)
          @worker.prepare_forked_child
          srand
          fork_warnings(threads)
          @worker.run_after_fork_hooks
          @worker.serve
          status = 0
        rescue SystemExit => e
          status = e.status
        rescue SignalException => e
          # Die of the signal, as a worker started directly would.
          flush_stdio
          Signal.trap(e.signo, "SYSTEM_DEFAULT")
          Process.kill(e.signo, Process.pid)
        rescue Exception => e # rubocop:disable Lint/RescueException -- report anything, then exit 1
          $stderr.write("#{BRIDGE_NAME}: the forked worker failed: #{e.full_message(highlight: false, order: :top)}")
        ensure
          flush_stdio
          exit!(status)
        end
      end

      # Warnings about what did not survive the fork, to the worker's log.
      # The threads alive in this process as the kernel counts them, so that
      # the threads a native extension starts count too; Ruby's own count
      # where there is no /proc.
      def thread_count
        [Dir.children("/proc/self/task").size, Thread.list.size].max
      rescue SystemCallError
        Thread.list.size
      end

      def fork_warnings(threads)
        if threads > 1
          $stderr.write("snakepit: the template had #{threads} threads when it forked; threads do not " \
                        "survive a fork (start them in a worker.after_fork hook)\n")
        end
        sockets = inherited_sockets
        return if sockets.empty?

        $stderr.write("snakepit: the template had #{sockets.size} socket#{sockets.size == 1 ? '' : 's'} " \
                      "open when it forked (fd #{sockets.join(', ')}), now shared by every worker, which " \
                      "interleaves their traffic (open connections in a worker.after_fork hook)\n")
      end

      # Descriptors of this process that are sockets, apart from stdio and
      # the worker's frame streams (whatever the pool made them of).
      def inherited_sockets
        own = [0, 1, 2] + @worker.frame_fds
        fds = begin
          Dir.children("/proc/self/fd").map(&:to_i).sort
        rescue SystemCallError
          [] # no /proc: nothing to check
        end
        fds.select do |fd|
          next false if own.include?(fd)

          File.readlink("/proc/self/fd/#{fd}").start_with?("socket:")
        rescue SystemCallError
          false # the directory's own descriptor, already closed
        end
      end

      # Reaps every worker that has exited and tells the pool.
      def reap
        loop { break unless @wake_r.read_nonblock(512, exception: false).is_a?(String) }
        # Only its workers: a process the script started itself is the
        # script's to wait for (waiting for any child would take it away).
        @children.keys.sort.each do |pid|
          begin
            done, status = Process.wait2(pid, Process::WNOHANG)
          rescue Errno::ECHILD
            # Reaped by someone else (a thread of the script): the pool
            # learns of the exit from its pidfd.
            @children.delete(pid)
            next
          end
          next if done.nil?

          @children.delete(pid)
          send_message({ "op" => "exited", "pid" => pid, "status" => status.to_i })
        end
      end

      def send_message(message)
        @socket.sendmsg(JSON.generate(message))
      rescue Errno::EPIPE, Errno::ECONNRESET, Errno::ENOTCONN
        nil # the pool is gone; the next read sees the end of the socket
      end

      def close_all(ios)
        ios.each { |io| io.close unless io.closed? }
        nil
      end

      def flush_stdio
        [$stdout, $stderr, STDOUT, STDERR].each do |io|
          io.flush
        rescue IOError, SystemCallError
          nil
        end
      end

      # A line on the template's log. When the log cannot be written (the
      # pool stopped reading it), the line is dropped: bad input must not
      # end the template, and neither may reporting it.
      def log(text)
        $stderr.write("#{BRIDGE_NAME}: template: #{text}\n")
      rescue StandardError
        nil
      end
    end
  end
end
