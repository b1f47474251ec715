# frozen_string_literal: true

module SnakepitBridge
  # What a handler gets besides its args: the request's metadata, streaming,
  # cancellation and calls back into the host (pool).
  #
  # Use it from the handler's own thread; #chunk and #call_host also work
  # from threads the handler starts.
  class Context
    attr_reader :request_id, :command, :session_id, :traceparent, :tracestate, :baggage, :timeout_ms

    def initialize(worker, request_id, command, message)
      @worker = worker
      @request_id = request_id
      @command = command
      # An optional field of another type than the protocol's is absent.
      @session_id = text(message["session_id"])
      @traceparent = text(message["traceparent"])
      @tracestate = text(message["tracestate"])
      @baggage = text(message["baggage"])
      timeout_ms = message["timeout_ms"]
      @timeout_ms = timeout_ms.is_a?(Integer) && timeout_ms >= 0 ? timeout_ms : nil
      @stream = message["stream"] == true
      @cancelled = false
      @answered = false
      @finished = false
    end

    # The worker's id in its pool (SNAKEPIT_WORKER_ID or the init ping's), or nil.
    def worker_id
      @worker.worker_id
    end

    # A Logger writing to stderr, which the pool forwards to its log.
    def logger
      @worker.logger
    end

    # True when the caller consumes partial results (request had stream: true).
    def stream?
      @stream
    end

    # Sends a partial result as a chunk frame, before the handler's return
    # value. The pool drops chunks for callers that did not ask for a stream.
    # True when sent; false once the call is answered (a thread of the
    # handler's that goes on after it returned): a chunk after the reply
    # would break the protocol, so it is not sent.
    def chunk(data)
      @worker.send_chunk(self, data)
    end

    # @api private: true once the reply is written (under the write lock).
    attr_accessor :answered

    # @api private: true once the handler has returned; its host calls
    # then raise Cancelled.
    attr_accessor :finished

    # True once the request was cancelled (SIGINT or a cancel frame).
    def cancelled?
      @cancelled
    end

    # Raises Cancelled if the request was cancelled; for handlers that run
    # code SIGINT cannot interrupt (long C calls) and poll between steps.
    def check_cancelled!
      raise Cancelled, "request #{@request_id} was cancelled" if @cancelled
    end

    # Calls a function the host registered and waits for its answer.
    # Returns the result, or raises HostCallError(error_type, message).
    # Works from the handler's thread and from threads it starts, while the
    # call runs; once the handler has returned it raises Cancelled (also in
    # a thread still waiting for its answer then).
    def call_host(function, args = {})
      @worker.call_host(self, function, args)
    end

    # Session store helpers on top of call_host (session.get/set/delete).
    def session
      @session ||= Session.new(self)
    end

    # @api private
    def mark_cancelled
      @cancelled = true
    end

    private

    # +value+ when it is a text string, else nil: a MessagePack bin arrives
    # as a binary (ASCII-8BIT) String.
    def text(value)
      value if value.is_a?(String) && value.encoding == Encoding::UTF_8
    end
  end

  # ctx.session: the pool's store for the request's session.
  class Session
    def initialize(ctx)
      @ctx = ctx
    end

    # The value stored under +key+, or nil.
    def get(key)
      @ctx.call_host("session.get", { "key" => key })
    end

    def set(key, value)
      @ctx.call_host("session.set", { "key" => key, "value" => value })
      nil
    end

    # True if the key existed.
    def delete(key)
      @ctx.call_host("session.delete", { "key" => key })
    end

    alias [] get
    alias []= set
  end

  # Registry of commands plus the serve loop. One request runs at a time on
  # the thread that called #run; SIGINT during a handler cancels it.
  # Requests the pool writes ahead (pipeline) wait in stdin and then in
  # @pending; a cancel frame for one of them answers it Cancelled before it
  # starts.
  class Worker
    CAPABILITIES = {
      "max_concurrency" => 1,
      "cancel" => false,
      "sigint" => true,
      "streaming" => true,
      "host_calls" => true,
      "pipeline" => true
    }.freeze

    TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%6NZ"

    # The most host calls of this worker that wait for their replies at
    # once, across all its calls and threads. It matches the pool's limit
    # (MAX_HOST_CALLS_IN_FLIGHT in crates/core/src/worker/host.rs): the
    # pool replaces a worker that has one more in flight. Further host
    # calls are held in the bridge, in the order they were made, until a
    # reply frees a place.
    MAX_HOST_CALLS_IN_FLIGHT = 256

    attr_reader :codec, :requests_handled

    # The largest frame payload, in bytes, this worker reads or writes: the
    # pool's max_frame_size (SNAKEPIT_MAX_FRAME_SIZE; 64 MiB without it).
    # A reply, chunk or host call that would be larger is never written
    # (see #fitted and #call_host).
    attr_reader :max_frame_size

    # codec: "json" or "msgpack"; nil reads SNAKEPIT_CODEC (default json).
    # input/output: IOs to speak frames on. When omitted the worker takes
    # over the process's stdin/stdout (see #take_over_stdio) so that nothing
    # user code prints can corrupt a frame.
    #
    # Started by a pool as a preload template (SNAKEPIT_PRELOAD=1, see
    # docs/preload.md), a worker that owns the process leaves stdout alone
    # (it is the template's log) and moves the pool's socket off fd 0; the
    # frame streams are taken over in each forked worker instead.
    def initialize(codec: nil, input: nil, output: nil)
      @codec_name = codec
      @codec = Wire.codec(codec)
      # Signal traps are process-wide, so only a worker that owns the
      # process's stdio installs them.
      @owns_process = input.nil? && output.nil?
      if @owns_process && Preload.requested?
        Preload.socket # fd 0 now reads /dev/null
        @input = @output = nil
      elsif @owns_process
        @input, @output = self.class.take_over_stdio
      else
        @input = input || self.class.take_over_stdio[0]
        @output = output || self.class.take_over_stdio[1]
      end
      @handlers = {}
      @after_fork = []
      @hooks_ran_in = nil
      @write_lock = Mutex.new
      reset_process_state
      command("ping") { |args, _ctx| Generic.ping(self, args) }
    end

    # Keeps duplicates of fds 0 and 1 for frames, then points fd 1 (and
    # $stdout) at stderr and fd 0 at /dev/null: `puts`, `print`, C
    # extensions and child processes all write to the log, and nothing can
    # read frames meant for the worker. Done once per process.
    def self.take_over_stdio
      @stdio ||= begin
        $stdout.flush
        STDOUT.flush
        frames_out = STDOUT.dup # the dup is close-on-exec: children never see it
        frames_out.binmode
        frames_out.sync = true
        frames_in = STDIN.dup
        frames_in.binmode
        STDOUT.reopen(STDERR)
        STDOUT.sync = true
        $stdout = new_user_stdout
        STDIN.reopen(File::NULL)
        [frames_in, frames_out].freeze
      end
    end

    # $stdout for user code: stderr, through a descriptor of its own (a
    # close-on-exec duplicate of stderr's, unbuffered). A handler that closes
    # it (`$stdout.close`, as code written for a command-line tool does when
    # it is done) closes only that duplicate: $stderr, the logger and the
    # pool's log are untouched, and the next request gets a new one (see
    # .restore_user_stdout).
    def self.new_user_stdout
      err = $stderr.is_a?(IO) && !$stderr.closed? ? $stderr : STDERR
      @user_stdout = err.dup.tap { |io| io.sync = true }
    end

    # @api private: before each request, gives $stdout back if a handler
    # closed the one the bridge set (a $stdout of the user's own is left as
    # it is).
    def self.restore_user_stdout
      return unless @user_stdout&.closed? && $stdout.equal?(@user_stdout)

      $stdout = new_user_stdout
    rescue SystemCallError, IOError
      nil # no descriptor to spare: puts keeps failing, the worker serves on
    end

    # @api private (Preload): a forked worker takes over its own stdio.
    def self.forget_stdio
      @stdio = nil
    end

    # Registers a handler: a block, or any object answering #call (a Method,
    # a lambda). It is called with (args, ctx); a callable taking a single
    # argument gets just args.
    def command(name, callable = nil, &block)
      handler = callable || block
      raise ArgumentError, "command #{name} needs a block or a callable" unless handler.respond_to?(:call)

      # A lambda, Method or other object whose #call takes one argument
      # would raise if given two (a plain block just ignores the extra one).
      strict = !handler.is_a?(Proc) || handler.lambda?
      if strict && call_arity(handler) == 1
        single = handler
        handler = ->(args, _ctx) { single.call(args) }
      end
      @handlers[name.to_s] = handler
      self
    end

    # Registers a hook (a block, or any object answering #call) that runs
    # once in each worker process before it serves its first call: in every
    # worker forked from a preload template, and in a worker started
    # directly, so a script works either way. Hooks run in registration
    # order and get the worker if they take an argument. A hook that raises
    # is logged to stderr and the process exits with status 1.
    #
    #   worker.after_fork { srand; DB.reconnect }
    def after_fork(callable = nil, &block)
      hook = callable || block
      raise ArgumentError, "after_fork needs a block or a callable" unless hook.respond_to?(:call)

      @after_fork << hook
      self
    end

    # The number of arguments +callable+'s #call takes (as Proc#arity
    # counts them), or nil when it cannot be told.
    def call_arity(callable)
      return callable.arity if callable.respond_to?(:arity)

      callable.method(:call).arity
    rescue NameError
      nil
    end
    private :call_arity

    # Names of the registered commands.
    def commands
      @handlers.keys
    end

    def worker_id
      @worker_id
    end

    def uptime
      Process.clock_gettime(Process::CLOCK_MONOTONIC) - @started
    end

    def logger
      @logger ||= begin
        require "logger"
        log = Logger.new($stderr, progname: BRIDGE_NAME)
        log.formatter = proc do |severity, time, _prog, msg|
          "#{time.utc.strftime(TIME_FORMAT)} #{severity} [#{@worker_id || Process.pid}] #{msg}\n"
        end
        log
      end
    end

    # The hello frame: sent first, announces what this bridge can do.
    def hello
      engine = RUBY_ENGINE == "ruby" ? "CRuby" : RUBY_ENGINE
      {
        "type" => "hello",
        "protocol" => PROTOCOL_VERSION,
        "pid" => Process.pid,
        "bridge" => "#{BRIDGE_NAME}/#{VERSION}",
        "runtime" => "#{engine} #{RUBY_ENGINE_VERSION}",
        "capabilities" => CAPABILITIES
      }
    end

    # Runs the after_fork hooks, then serves requests until stdin reaches
    # EOF (or the pool goes away), then returns. SIGTERM exits the process
    # with status 0.
    #
    # With SNAKEPIT_PRELOAD=1 (the pool preloads, docs/preload.md) it
    # becomes the template instead: it forks a worker for each request of
    # the pool, and each of those serves and exits without returning here.
    # The template itself exits when the pool closes its socket.
    def run
      if Preload.requested?
        unless @owns_process
          raise Error, "SNAKEPIT_PRELOAD=1: a preloaded worker must own the process's stdin and stdout " \
                       "(create it with Worker.new, without input:/output:)"
        end
        Preload.run_template(self) # never returns
      end
      run_after_fork_hooks
      serve
    end

    # @api private (Preload): the after_fork hooks, once per process.
    def run_after_fork_hooks
      return if @hooks_ran_in == Process.pid

      @hooks_ran_in = Process.pid
      @after_fork.each do |hook|
        arity = call_arity(hook)
        arity.nil? || !arity.zero? ? hook.call(self) : hook.call
      rescue SystemExit
        raise
      rescue Exception => e # rubocop:disable Lint/RescueException -- any hook failure stops the worker
        # SIGTERM while a hook runs (before the worker's trap is in place)
        # is the pool stopping the worker, not a failed hook: status 0, as
        # SIGTERM gives while serving.
        exit(0) if e.is_a?(SignalException) && e.signo == Signal.list["TERM"]

        $stderr.write("#{BRIDGE_NAME}: an after_fork hook failed; exiting with status 1\n" \
                      "#{e.full_message(highlight: false, order: :top)}")
        $stderr.flush
        exit(1)
      end
    end

    # @api private (Preload): in a worker just forked from the template,
    # with the pool's pipes on fds 0-2 and its environment applied, takes
    # over the new stdio and forgets what was read at construction.
    def prepare_forked_child
      self.class.forget_stdio
      @input, @output = self.class.take_over_stdio
      @codec = Wire.codec(@codec_name)
      reset_process_state
    end

    # @api private (Preload): the fds carrying frames, once stdio is taken over.
    def frame_fds
      [@input, @output].compact.map(&:fileno)
    end

    # @api private (run, Preload): the serve loop of #run, without the hooks.
    def serve
      @serving_thread = Thread.current
      @serving_pid = Process.pid
      install_signal_handlers if @owns_process
      write_message(hello)
      while (message = next_to_run)
        dispatch(message)
      end
      nil
    rescue Errno::EPIPE
      log("stdout closed by the pool; exiting")
      nil
    end

    # @api private (Context#chunk). A chunk larger than the pool reads ends
    # the call instead: its failed reply (ResultTooLarge) is written in the
    # chunk's place, and the handler's return value is then dropped, as
    # every later chunk is. Its host calls fail as once it has returned:
    # the pool no longer knows the call.
    def send_chunk(ctx, data)
      payload = @codec.encode({ "type" => "chunk", "id" => ctx.request_id, "data" => data })
      if payload.bytesize > @max_frame_size
        payload = too_large(ctx.request_id, "chunk", payload.bytesize)
        write_payload(payload, after: ctx) { return false if ctx.answered }
        ctx.finished = true
        fail_waiting(ctx) { finished_error(ctx) }
        return false
      end
      write_payload(payload) { return false if ctx.answered }
      true
    end

    # @api private (Context#call_host). From the handler's thread or one it
    # started, while the call runs. Whichever thread waits for a host reply
    # reads stdin, one at a time, and hands each reply to the thread that
    # made the call; other frames seen meanwhile are handled or queued for
    # the main loop.
    def call_host(ctx, function, args)
      leave_if_forked # before it could read stdin for a place
      ctx.check_cancelled!
      raise finished_error(ctx) if ctx.finished

      id = @host_lock.synchronize { @host_call_seq += 1 }
      payload = begin
        @codec.encode({ "type" => "host_call", "id" => id, "request_id" => ctx.request_id,
                        "function" => function.to_s, "args" => args })
      rescue JSON::NestingError => e
        # Nothing was sent. The host would refuse such a frame as TooDeep
        # (as it does from the Python and Node.js bridges, which send it).
        raise HostCallError.new("TooDeep", "the arguments of host call #{function} are nested too deep: #{e.message}")
      end
      if payload.bytesize > @max_frame_size
        # The pool would refuse the frame and replace the worker: the
        # handler learns it here, and nothing is sent.
        name = function.to_s
        name = "#{name.byteslice(0, 100)}..." if name.bytesize > 100
        raise HostCallError.new("ResultTooLarge", "the host call #{utf8_text(name)} would be " \
                                                  "#{payload.bytesize} bytes, above the pool's limit of #{@max_frame_size}")
      end
      waiter = HostWaiter.new(ctx, id)
      # Cancelled, and any exception another thread raises here (the
      # handler's own Timeout.timeout), is deferred from here but in the
      # waits: a host call given a place is always sent or gives it back.
      # One cancelled between the two would keep it for good (no reply
      # would ever free it), and 256 such would hold every later host call.
      Thread.handle_interrupt(Exception => :never) do
        @host_lock.synchronize do
          raise finished_error(ctx) if ctx.finished

          # In @host_waiting from now on, held or sent: whatever fails the
          # call's host calls (its cancel frame, its end, end of input)
          # fails a held one too, which is then never sent.
          @host_waiting[id] = waiter
          @host_held << waiter
          admit_held
        end
        begin
          await_host { waiter.done? || waiter.admitted }
          unless waiter.done?
            # Cancelled by SIGINT while it was held: never sent.
            ctx.check_cancelled!
            raise finished_error(ctx) unless send_host_call(ctx, payload)

            waiter.sent = true
            await_host { waiter.done? }
          end
        ensure
          forget_host_call(waiter)
        end
      end
      raise waiter.value unless waiter.ok

      waiter.value
    end

    # @api private: a host call waiting for its reply.
    class HostWaiter
      attr_reader :ctx, :id, :thread, :ok, :value
      # admitted: it holds one of the MAX_HOST_CALLS_IN_FLIGHT places and
      # may be written (set under the worker's host lock); sent: it was
      # written (set by the thread that made it).
      attr_accessor :admitted, :sent

      def initialize(ctx, id)
        @ctx = ctx
        @id = id
        @thread = Thread.current
        @done = false
        @admitted = false
        @sent = false
      end

      def done?
        @done
      end

      def settle(ok, value)
        return if @done

        @ok = ok
        @value = value
        @done = true
      end
    end

    private

    # Writes a host call of +ctx+'s call, unless the handler has returned
    # or the call is answered (false). Checked under the write lock, which
    # the reply is written under too: a host call never follows its call's
    # reply, after which the pool would no longer know the call's session.
    # A chunk too large to send answers the call before the call is marked
    # finished, on the chunk's thread, after the lock is let go.
    def send_host_call(ctx, payload)
      write_payload(payload) { return false if ctx.finished || ctx.answered }
      true
    end

    def finished_error(ctx)
      Cancelled.new("request #{ctx.request_id} is already finished: its ctx can no longer call the host")
    end

    # Returns once the block is true (a host call's waiter is settled; or,
    # while it is held, settled or admitted): reads stdin while no other thread does,
    # else waits for the one that does. A held host call reads too: the
    # replies that free a place may be for host calls nobody waits for
    # any more. SIGINT may cancel the handler (on the serving thread), and
    # an exception another thread raises (Thread#raise, as Timeout.timeout
    # does) may land, only while it waits: a frame is read and dealt with
    # shielded, so neither leaves half a frame behind, nor loses a request
    # read but not yet queued. (Thread#kill is not held off: the process's
    # exit kills its threads.)
    def await_host(&ready)
      serving = Thread.current.equal?(@serving_thread)
      Thread.handle_interrupt(Exception => :never) do
        loop do
          @host_lock.synchronize do
            until ready.call || @stdin_holder.nil?
              Thread.handle_interrupt(Exception => :immediate) { @host_cond.wait(@host_lock) }
            end
            return if ready.call

            @yield_r, @yield_w = IO.pipe if !serving && @yield_r.nil?
            @stdin_holder = Thread.current
          end
          begin
            read_for(ready, serving)
          ensure
            @host_lock.synchronize do
              @stdin_holder = nil
              @host_cond.broadcast
            end
          end
        end
      end
    end

    # Reads frames, acting on each, until +ready+ is true (or, on a thread
    # of the handler's, until the serving thread takes stdin back).
    def read_for(ready, serving)
      reader = frame_reader
      until ready.call
        unless reader.buffered?
          if serving
            Thread.handle_interrupt(Exception => :immediate) { IO.select([@input]) }
          else
            readable, = Thread.handle_interrupt(Exception => :immediate) { IO.select([@input, @yield_r]) }
            return if @loop_wants && readable.include?(@yield_r)
            next unless readable.include?(@input)
          end
        end
        message = next_message
        if message.nil?
          fail_waiting(nil) { |id| HostCallError.new("Disconnected", "stdin closed while waiting for host call #{id}") }
          return
        end
        host_frame(message)
      end
    end

    # Acts on a frame read while host calls wait: a reply settles the host
    # call it answers, a cancel of the running call fails its host calls,
    # requests wait in @pending (a cancel takes out the request it names if
    # it waits there).
    def host_frame(message)
      # An id that is not an Integer names nothing (eql?: 4.0 is not 4).
      case message["type"]
      when "host_reply"
        waiter = @host_lock.synchronize do
          found = nil
          if reply_read(message["id"])
            found = @host_waiting.delete(message["id"])
            found&.settle(*host_outcome(message))
          end
          found
        end
        unawaited_reply(message["id"]) unless waiter
      when "cancel"
        ctx = @current
        cancel_running(ctx) if ctx&.request_id.eql?(message["id"])
        cancel_waiting(message["id"])
      when nil, "request"
        @pending << message
      else
        protocol_error("unknown frame type #{Wire.shown(message['type'])}")
      end
    end

    # A cancel frame for the running call, read while host calls wait:
    # they fail with Cancelled. The serving thread raises it from its own
    # host call if it waits in one; else it is interrupted as by SIGINT.
    # Either way the pool's SIGINT that follows finds the call cancelled,
    # and is ignored (it would cut into the handler's clean-up).
    def cancel_running(ctx)
      threads = fail_waiting(ctx) { Cancelled.new("request #{ctx.request_id} was cancelled") }
      if threads.include?(@serving_thread)
        ctx.mark_cancelled
      else
        interrupt_current
      end
    end

    # [ok, result or error] of a host_reply.
    def host_outcome(message)
      message["success"] == true ? [true, message["result"]] : [false, host_error(message["error"])]
    end

    # Under @host_lock: the reply to host call +id+ was read. If that host
    # call was written and not yet answered, its place is free for the
    # first held one, and true is returned (its waiter, if one still waits,
    # is for the caller to settle). A reply to a host call whose waiter gave
    # up (cancelled, or its call ended) frees its place only now: until
    # then the pool still counts it.
    def reply_read(id)
      return false unless id.is_a?(Integer) && @host_in_flight.delete(id)

      admit_held
      true
    end

    # Under @host_lock: gives free places to held host calls, first held
    # first, and wakes the threads waiting on @host_cond.
    def admit_held
      while (waiter = @host_held.first) && @host_in_flight.size < MAX_HOST_CALLS_IN_FLIGHT
        @host_held.shift
        next if waiter.done? # failed while held: never sent

        waiter.admitted = true
        @host_in_flight[waiter.id] = true
      end
      @host_cond.broadcast
    end

    # A host call's waiter is done with (answered, failed, or its thread
    # interrupted). One never written gives its place back (or leaves the
    # queue of held ones); one written keeps its place until its reply is
    # read.
    def forget_host_call(waiter)
      @host_lock.synchronize do
        @host_waiting.delete(waiter.id)
        unless waiter.sent
          if waiter.admitted
            @host_in_flight.delete(waiter.id)
          else
            @host_held.delete(waiter)
          end
          admit_held
        end
      end
    end

    # Fails the host calls of +ctx+ waiting for their reply or held (all of
    # them when +ctx+ is nil), each with the block's error for its id.
    # Returns the threads that made them.
    def fail_waiting(ctx)
      threads = []
      @host_lock.synchronize do
        @host_waiting.delete_if do |id, waiter|
          next false unless ctx.nil? || waiter.ctx.equal?(ctx)

          waiter.settle(false, yield(id))
          threads << waiter.thread
          true
        end
        @host_cond.broadcast
      end
      threads
    end

    # The handler has returned (+ctx+ is finished): fails the host calls of
    # its call still waiting, and takes stdin back for the serving thread,
    # from a thread that reads it if one does (woken through the yield
    # pipe: whatever it read is buffered or queued by then).
    def take_stdin_back(ctx)
      fail_waiting(ctx) { finished_error(ctx) }
      @host_lock.synchronize do
        unless @stdin_holder.nil?
          @loop_wants = true
          @yield_w.write_nonblock("\0", exception: false)
          @host_cond.wait(@host_lock) until @stdin_holder.nil?
          @loop_wants = false
          nil while @yield_r.read_nonblock(64, exception: false).is_a?(String)
        end
        @stdin_holder = :loop
      end
    end

    # What belongs to one worker process: read at construction, and again
    # in each worker forked from a preload template.
    def reset_process_state
      @pending = []
      @current = nil
      @host_call_seq = 0
      # Stdin has one reader at a time: the serving thread between calls
      # (:loop); while a handler runs, the thread that waits for a host
      # reply (nil when none does). Guarded by @host_lock, as are
      # @host_waiting (host call id -> HostWaiter) and @loop_wants.
      @host_lock = Mutex.new
      @host_cond = ConditionVariable.new
      @stdin_holder = :loop
      @host_waiting = {}
      # Host calls given a place (id -> true): about to be written, or
      # written with their replies not read yet (their waiters gone or
      # not), at most MAX_HOST_CALLS_IN_FLIGHT; and
      # the host calls held until a place is free (HostWaiters, first
      # made first). Guarded by @host_lock.
      @host_in_flight = {}
      @host_held = []
      @loop_wants = false
      # A byte in it tells a thread that reads stdin to let it go (the
      # handler returned); opened on first use.
      @yield_r = @yield_w = nil
      @requests_handled = 0
      @unawaited_replies = 0 # see #unawaited_reply
      # Read again in a forked worker, whose environment the pool sets.
      @max_frame_size = Wire.frame_limit
      @started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      # The id is text (the pool's name, UTF-8), but Ruby tags ENV values
      # with the locale's encoding: binary under a C locale, which would go
      # out as a MessagePack bin and break log lines that are not ASCII.
      @worker_id = ENV["SNAKEPIT_WORKER_ID"]&.dup&.force_encoding(Encoding::UTF_8)&.scrub
      @worker_id = nil if @worker_id&.empty?
      @logger = nil
      @timestamp_second = nil
      @int_trapped = false
      @sigint_unarmed = false
      @terminating = false
    end

    def install_signal_handlers
      # Trap handlers run on the main thread; Thread#raise queues Cancelled
      # for the serving thread, where Thread.handle_interrupt decides when it
      # may land (only while a handler runs).
      Signal.trap("INT") { interrupt_current }
      @int_trapped = true
      # A handler that rescues Exception may swallow the SystemExit: the
      # worker then exits as soon as the handler returns.
      Signal.trap("TERM") do
        @terminating = true
        exit(0)
      end
    end

    # A SIGINT while no handler runs is noted: it may be for the request
    # about to start, signalled while it was still read or decoded (see
    # #cancel_sent_for?).
    def interrupt_current
      ctx = @current
      unless ctx
        @sigint_unarmed = true
        return
      end
      # Already cancelled (its cancel frame came during a host call): a
      # second interruption would cut into its clean-up.
      return if ctx.cancelled?

      ctx.mark_cancelled
      @serving_thread.raise(Cancelled.new("request #{ctx.request_id} was cancelled"))
    end

    # The next decodable message, or nil at EOF. Undecodable frames are
    # answered with a ProtocolError (id 0) and skipped.
    def next_message
      loop do
        payload = frame_reader.read_frame
        return nil if payload.nil?

        return @codec.decode(payload)
      rescue FrameTooLarge => e
        protocol_error(e.message) # the reader skips the frame as it arrives
      rescue DecodeError => e
        if e.kind == :truncated
          log("#{e.message}; treating it as end of input")
          return nil
        end
        protocol_error(e.message)
      end
    end

    # The next message to dispatch, or nil at the end of input. Requests the
    # pool wrote ahead wait in @pending. Before one of them starts, what
    # stdin holds already is read without waiting, so that a cancel sent
    # while the call before it ran takes it out. When a frame arrives alone
    # (lockstep) this costs nothing beyond the read that brought it.
    def next_to_run
      reader = frame_reader
      loop do
        if @pending.empty? && reader.leftover?
          # Frames read while the last call ran (with a host call's reply):
          # written ahead, so stdin is looked into for their cancels first,
          # as for those in @pending.
          read_ahead(reader)
          next unless @pending.empty?
        end
        if @pending.empty?
          message = next_message
          return message if message.nil? || !reader.leftover?

          # More came with it: split what is whole, cancels applied.
          enqueue(message)
        elsif !reader.read_waiting && !reader.leftover?
          return @pending.shift
        end
        read_ahead(reader)
        message = @pending.shift
        return message if message
      end
    end

    # Moves every whole frame already read into @pending, but those the
    # block (if given) takes. Undecodable ones are answered with a
    # ProtocolError (id 0) and skipped, as by #next_message.
    def read_ahead(reader)
      loop do
        payload = reader.take_buffered
        return if payload.nil?

        message = @codec.decode(payload)
        enqueue(message) unless block_given? && yield(message)
      rescue DecodeError => e # FrameTooLarge too: the reader skips it as it arrives
        protocol_error(e.message)
      end
    end

    # Queues a frame read ahead; a cancel frame is applied at once.
    def enqueue(message)
      if message["type"] == "cancel"
        cancel_waiting(message["id"])
      else
        @pending << message
      end
    end

    # The request +id+, if it waits in @pending, is answered Cancelled and
    # never runs. A cancel for anything else comes too late (the call ran or
    # runs: SIGINT is how the pool stops a running call) or before its
    # request, and is dropped.
    def cancel_waiting(id)
      return unless id.is_a?(Integer) && id.positive?

      # eql?: a request whose id is 2.0 is no request 2 (it is invalid).
      index = @pending.index { |m| m["id"].eql?(id) && (m["type"].nil? || m["type"] == "request") }
      return if index.nil?

      @pending.delete_at(index)
      reply_error(id, "Cancelled", "request #{id} was cancelled before it started")
    end

    # Frames are read from @input through one reader (a forked worker's
    # @input is new, and so is its reader).
    def frame_reader
      @frame_reader = Wire::FrameReader.new(@input, @max_frame_size) unless @frame_reader&.io.equal?(@input)
      @frame_reader
    end

    def dispatch(message)
      case message["type"]
      when nil, "request" then serve_request(message)
      when "cancel" then nil # for nothing waiting: too late, or before its request
      when "host_reply"
        # Late: its host call's waiter gave up, but its place is freed now.
        @host_lock.synchronize { reply_read(message["id"]) }
        unawaited_reply(message["id"])
      else protocol_error("unknown frame type #{Wire.shown(message['type'])}")
      end
    end

    def serve_request(message)
      id = message["id"]
      command = message["command"]
      args = message["args"]
      args = {} if args.nil? # missing or null: no arguments
      unless id.is_a?(Integer) && id.positive?
        # No usable id: the reply goes under id 0 (protocol.md, section 4).
        return reply_error(0, "InvalidRequest",
                           id.nil? ? "request has no id" : "request id must be a positive integer")
      end
      return reply_error(id, "InvalidRequest", "request has no command") if command.nil?
      # A MessagePack bin arrives as a binary String, and is no string.
      unless command.is_a?(String) && command.encoding == Encoding::UTF_8
        return reply_error(id, "InvalidRequest", "command must be a string")
      end
      return reply_error(id, "InvalidRequest", "args must be a map") unless args.is_a?(Hash)

      @requests_handled += 1
      note_worker_id(command, args)
      handler = @handlers[command]
      return reply_error(id, "UnknownCommand", "Unknown command: #{command}") unless handler

      ctx = Context.new(self, id, command, message)
      self.class.restore_user_stdout
      write_reply(id, run_handler(handler, args, ctx), ctx)
    end

    # Runs the handler with Cancelled deliverable only inside it, and makes
    # sure a SIGINT that arrives just as it returns cannot escape.
    def run_handler(handler, args, ctx)
      Thread.handle_interrupt(Cancelled => :never) do
        @current = ctx
        if @sigint_unarmed && cancel_sent_for?(ctx.request_id)
          @current = nil
          @requests_handled -= 1 # it never ran: not counted, as one dropped while read ahead
          drain_cancellation
          return [false, { "type" => "Cancelled",
                           "message" => "request #{ctx.request_id} was cancelled before it started" }]
        end
        outcome = begin
          # Stdin goes to whichever thread waits for a host reply first. A
          # plain store: no thread waits for stdin now (a host call made
          # after the last take-back found its call finished, and one made
          # before it was failed by it).
          @stdin_holder = nil
          result = Thread.handle_interrupt(Cancelled => :immediate) { handler.call(args, ctx) }
          ctx.cancelled? ? cancelled_error(ctx) : [true, result]
        rescue Cancelled
          cancelled_error(ctx)
        rescue SystemExit
          raise
        rescue SignalException => e
          # With our INT trap, a SIGINT never raises Interrupt: this one (or
          # a subclass of its own other than Cancelled, rescued above) was
          # raised by the handler's code, and is its failure. Other signals'
          # exceptions end the worker, as the signal would.
          raise unless e.is_a?(Interrupt) && @int_trapped

          ctx.cancelled? ? cancelled_error(ctx) : [false, error_map(e)]
        rescue Exception => e # rubocop:disable Lint/RescueException -- any handler failure becomes a reply
          # A handler that turned its cancellation into another error was
          # still cancelled: the reply says so.
          ctx.cancelled? ? cancelled_error(ctx) : [false, error_map(e)]
        ensure
          # Before it could wait for a thread of the parent's that holds stdin.
          leave_if_forked
          @current = nil
          # A thread the handler left behind emits nothing now, and its
          # host calls fail: stdin is the loop's again.
          ctx.finished = true
          if @host_waiting.empty? && @stdin_holder.nil?
            # The common case, with no lock and no wake-up: no host call
            # waits and no thread reads stdin. One that starts from now on
            # finds ctx.finished set (send_host_call checks it once the host
            # call is in @host_waiting): it neither waits nor reads. The
            # table is looked at first: a thread reads stdin only while its
            # host call is in it, and lets go only after taking it out, so
            # with the table seen empty, the holder seen nil is no thread's.
            @stdin_holder = :loop
          elsif @stdin_holder != :loop
            take_stdin_back(ctx)
          end
        end
        exit(0) if @terminating # SIGTERM came, and the handler kept it
        drain_cancellation
        outcome
      end
    end

    # After a SIGINT that came while no handler ran: whether the pool sent a
    # cancel frame for request +id+ (it sends one before its SIGINT to a
    # worker that declares pipeline). What stdin holds now is read without
    # waiting; other frames are queued as read ahead. Runs with Cancelled
    # deferred, so no cancellation falls between a read and its buffering.
    def cancel_sent_for?(id)
      @sigint_unarmed = false
      reader = frame_reader
      nil while reader.read_waiting
      found = false
      read_ahead(reader) do |message|
        mine = !found && message["type"] == "cancel" && message["id"].eql?(id)
        found ||= mine
        mine # taken; every other frame is queued
      end
      found
    end

    # SIGINTs that landed after the handler returned (or a second one while
    # the first was being handled) left Cancelled exceptions queued; consume
    # them here, where they are harmless, before they can escape the mask.
    def drain_cancellation
      # No class argument: Ruby 3.1's Thread.pending_interrupt?(klass)
      # compares queued exception objects as if they were classes and can
      # crash the VM. Nothing else queues interrupts on this thread.
      while Thread.pending_interrupt?
        begin
          Thread.handle_interrupt(Object => :immediate) { Thread.pass }
        rescue Cancelled
          nil
        end
      end
    end

    # A host_reply no host call waits for (its wait was given up, or it
    # names none) is dropped. The host may send them without end (a bug,
    # or on purpose), so the log gets the first of them and then one line
    # at the 10th, 100th, 1000th, ..., each with the count so far. Called
    # by the thread that holds stdin, one at a time.
    def unawaited_reply(id)
      @unawaited_replies += 1
      count = @unawaited_replies
      if count == 1
        log("host_reply #{Wire.shown(id)} matches no waiting host call; dropped " \
            "(the next such replies are counted, and logged at the 10th, 100th, 1000th, ...)")
      elsif count.digits.sum == 1
        log("#{count} host_replies matching no waiting host call dropped so far (the last: #{Wire.shown(id)})")
      end
    end

    def cancelled_error(ctx)
      [false, { "type" => "Cancelled", "message" => "request #{ctx.request_id} was cancelled" }]
    end

    # The failed reply's fields. An exception whose #message raises (it
    # reads something that is not there), whose #backtrace is not an
    # Array, or whose class's own .name or .to_s raises, still gives a
    # reply: the worker must not die building it.
    def error_map(exception)
      {
        "type" => readable { utf8_text(exception.class.name || exception.class.to_s) } ||
                  readable { Module.instance_method(:name).bind_call(exception.class) } || "Exception",
        "message" => readable { utf8_text(exception.message) } || "<message unavailable>",
        "traceback" => readable do
          trace = exception.backtrace
          trace.is_a?(Array) ? trace.map { |line| utf8_text(line) }.join("\n") : ""
        end || ""
      }
    end

    # The block's value, or nil if it raises. An exception's #message can
    # raise anything (Exception itself, Interrupt, NoMemoryError), and the
    # failed reply must go out all the same; only leaving the process goes
    # through.
    def readable
      yield
    rescue Exception => e # rubocop:disable Lint/RescueException -- see above
      raise if leaves_process?(e)

      nil
    end

    # Whether +exception+ ends the worker rather than one call: SystemExit
    # (`exit`, and the SIGTERM trap), or the exception of a signal other
    # than SIGINT, which ends it as the signal would.
    def leaves_process?(exception)
      exception.is_a?(SystemExit) || (exception.is_a?(SignalException) && !exception.is_a?(Interrupt))
    end

    # +text+ as a valid UTF-8 string, which either codec can write: an error's
    # message may hold bytes that are not ("caf\xff" from a file, or a binary
    # string), and the failed reply is the only way the caller learns of the
    # error, so bad bytes become U+FFFD instead of the reply failing too.
    def utf8_text(text)
      text = text.to_s
      return text if text.encoding == Encoding::UTF_8 && text.valid_encoding?

      # Text in another encoding is transcoded, dummy ones included
      # (UTF-16 with its BOM, ISO-2022-JP); one Ruby has no converter for
      # (UTF-7) raises, and its bytes are taken as UTF-8 below.
      text = if text.encoding == Encoding::BINARY || text.encoding == Encoding::US_ASCII
               text.dup.force_encoding(Encoding::UTF_8)
             else
               text.encode(Encoding::UTF_8, invalid: :replace, undef: :replace)
             end
      text.valid_encoding? ? text : text.scrub
    rescue EncodingError
      text.dup.force_encoding(Encoding::UTF_8).scrub
    end

    # Writes the reply of request +id+; +ctx+, when given, is marked
    # answered in the same hold of the write lock, so none of its chunks can
    # follow the reply.
    def write_reply(id, outcome, ctx = nil)
      success, value = outcome
      reply = if success
                { "id" => id, "success" => true, "result" => value, "timestamp" => timestamp }
              else
                { "id" => id, "success" => false, "error" => value, "timestamp" => timestamp }
              end
      payload = begin
        @codec.encode(reply)
      rescue Exception => e # rubocop:disable Lint/RescueException -- see below
        raise if leaves_process?(e)

        # A result the codec cannot represent (NaN, an arbitrary object
        # under msgpack, a string whose bytes are not valid UTF-8, a value
        # nested too deep), or whose own conversion raises (a #to_s or
        # #to_json that raises any exception), still gets an answer, and the
        # worker lives on.
        error = error_map(e)
        error["message"] = "result cannot be encoded as #{@codec.name}: #{error['message']}"
        @codec.encode({ "id" => id, "success" => false, "error" => error, "timestamp" => timestamp })
      end
      # A chunk too large to send has answered the call already.
      write_payload(fitted(id, payload), after: ctx) { return if ctx&.answered }
    end

    def reply_error(id, type, message)
      reply = { "id" => id, "success" => false,
                "error" => { "type" => type, "message" => utf8_text(message) }, "timestamp" => timestamp }
      write_payload(fitted(id, @codec.encode(reply)))
    end

    # +payload+, the reply to request +id+, if the pool reads a payload of
    # its size; else the failed reply that says it would not have
    # (ResultTooLarge, protocol.md section 5): the pool replaces a worker
    # that writes a larger frame.
    def fitted(id, payload)
      payload.bytesize > @max_frame_size ? too_large(id, "result", payload.bytesize) : payload
    end

    def too_large(id, what, size)
      message = "the #{what} would be #{size} bytes, above the pool's limit of #{@max_frame_size}"
      log("request #{id}: #{message}; sent ResultTooLarge instead")
      @codec.encode({ "id" => id, "success" => false, "error" => { "type" => "ResultTooLarge", "message" => message },
                      "timestamp" => timestamp })
    end

    def protocol_error(message)
      reply_error(0, "ProtocolError", message)
    end

    # The HostCallError of a host_reply without success: true: the error's
    # type and message, "HostError" and a message of its own where it has none.
    def host_error(error)
      if error.is_a?(Hash)
        type = error["type"].to_s
        message = error["message"].to_s
      else
        type = ""
        message = error.to_s
      end
      HostCallError.new(type.empty? ? "HostError" : type, message.empty? ? "host call failed" : message)
    end

    def note_worker_id(command, args)
      return unless @worker_id.nil? && command == "ping" && args["initialization"]

      id = args["worker_id"]
      # Text only: a MessagePack bin arrives as a binary String.
      @worker_id = id if id.is_a?(String) && id.encoding == Encoding::UTF_8 && !id.empty?
    end

    def write_message(message)
      write_payload(@codec.encode(message))
    end

    # Writes one frame under the write lock. A block given is run first,
    # under the lock (it may return from the caller to write nothing); the
    # context +after+ is marked answered once the frame is written.
    def write_payload(payload, after: nil)
      leave_if_forked
      frame = Wire.frame(payload)
      locked = proc do
        @write_lock.synchronize do
          yield if block_given?
          @output.write(frame)
          after.answered = true if after
        end
      end
      if @current
        # Inside a handler: never let a cancellation, or an exception
        # another thread raises (Timeout.timeout around ctx.chunk), cut a
        # frame in half; it lands once the frame is written.
        Thread.handle_interrupt(Exception => :never, &locked)
      else
        locked.call
      end
    end

    # A process a handler forked without a block (or by Process.daemon)
    # goes on with a copy of the handler's code, and reaches the bridge
    # when that returns, sends a chunk or calls the host. The frames are
    # its parent's: a reply from it would answer a call twice, and a read
    # would take frames meant for the worker. So it leaves at once, with
    # exit! as a forked preloaded worker does (the at_exit handlers and
    # finalizers of the parent are not its own).
    def leave_if_forked
      return if @serving_pid.nil? || Process.pid == @serving_pid

      log("process #{Process.pid}, forked by a handler of worker #{@serving_pid}, reached the pool's frames; " \
          "it exits with status 1 and writes nothing (end a forked child with exit!, or give fork a block)")
      exit!(1)
    end

    # UTC ISO-8601 with microseconds. Every reply carries one, so the
    # expensive part (Time#strftime) runs once per second, not per reply.
    def timestamp
      micros = Process.clock_gettime(Process::CLOCK_REALTIME, :microsecond)
      seconds, fraction = micros.divmod(1_000_000)
      if seconds != @timestamp_second
        @timestamp_second = seconds
        @timestamp_prefix = Time.at(seconds).utc.strftime("%Y-%m-%dT%H:%M:%S.")
      end
      # Adding 10**6 pads the fraction to six digits without a format call.
      "#{@timestamp_prefix}#{(fraction + 1_000_000).to_s[1, 6]}Z"
    end

    # A line on stderr. A handler may have closed $stderr or replaced it
    # with something that fails to write, and the pool may have stopped
    # reading the log: a line that cannot be written is dropped, since the
    # frames it reports on must still be answered.
    def log(message)
      $stderr.write("#{BRIDGE_NAME}: #{message}\n")
    rescue StandardError
      nil
    end
  end
end
