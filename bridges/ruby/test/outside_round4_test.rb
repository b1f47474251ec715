# frozen_string_literal: true

require_relative "test_helper"
require_relative "preload_test" # TemplateProcess, ForkedWorker, PRELOAD_WORKER
require "set"
require "bigdecimal"

# Outside review, round 4: test/round4_worker.rb (and the Ruby example of
# docs/bridges.md) driven over real pipes, as a handler author who returns
# and raises unusual things and writes to stdout every way Ruby has, and as
# a pool that sends hostile frames and signals; the frame reader fed one
# byte at a time; hostile messages to a preload template. Each test names
# the promise it checks. Time bounds only turn hangs into failures.
class OutsideRound4Test < Minitest::Test
  WORKER = File.join(__dir__, "round4_worker.rb")
  BRIDGES_MD = File.expand_path("../../../docs/bridges.md", __dir__)
  MSGPACK = begin
    require "msgpack"
    true
  rescue LoadError
    false
  end
  CODECS = (MSGPACK ? %w[json msgpack] : %w[json]).freeze

  def setup
    @workers = []
    @dir = nil
  end

  def teardown
    @workers.each(&:stop)
    FileUtils.remove_entry(@dir) if @dir
  end

  def spawn(codec = "json", script: WORKER, **options)
    WorkerProcess.new(script, codec: codec, **options).tap { |w| @workers << w }
  end

  def assert_failed(reply, id, type)
    assert_equal [id, false, type], [reply["id"], reply["success"], reply.dig("error", "type")], reply.inspect[0, 600]
    reply["error"]
  end

  def assert_ok(reply, id)
    assert_equal [id, true], [reply["id"], reply["success"]], reply.inspect[0, 600]
    reply["result"]
  end

  def assert_serving(worker, id)
    assert_equal({ "still" => "here" }, assert_ok(worker.call(id, "echo", { "still" => "here" }), id),
                 worker.stderr[-600..])
  end

  # README, Errors: "Every exception a handler raises is a failed reply of
  # its class, and the worker serves on". The reply is built from the
  # exception's class name; a class whose own .name (or, when .name is nil,
  # .to_s) raises used to kill the worker while it built the reply.
  def test_an_exception_whose_class_name_raises_is_a_failed_reply_and_the_worker_serves_on
    CODECS.each do |codec|
      w = spawn(codec)
      error = assert_failed(w.call(1, "raise_odd_class", { "kind" => "name_raises" }), 1, "NameRaises")
      assert_equal "odd class", error["message"]
      assert_failed(w.call(2, "raise_odd_class", { "kind" => "to_s_raises" }), 2, "ToSRaises")
      # A .name that answers, even oddly, is the class's name.
      assert_failed(w.call(3, "raise_odd_class", { "kind" => "name_is_a_number" }), 3, "42")
      assert_serving(w, 4)
    end
  end

  # The bridge logs on stderr the frames it ignores (a host_reply no host
  # call waits for, a stream cut inside a frame). A handler that closed
  # $stderr used to make the next such frame kill the worker: the bridge
  # must never crash on input, and the end of stdin exits 0.
  def test_a_handler_that_closed_stderr_does_not_make_ignored_frames_fatal
    w = spawn("json")
    assert_equal true, assert_ok(w.call(1, "close_stderr"), 1)
    w.send_message({ "type" => "host_reply", "id" => 7, "success" => true, "result" => 1 })
    assert_serving(w, 2)
    w.send_raw([50].pack("N") + "{\"id\":3") # the stream ends inside this frame
    w.close_stdin
    status = w.wait(30)
    refute_nil status, "the worker did not exit at the end of stdin"
    assert_equal 0, status.exitstatus, status.inspect
    assert_equal "", w.drain_stdout(0.1), "nothing follows the last reply"
  end

  # docs/bridges.md, Codecs: "Ruby under JSON writes any other object (Set,
  # Time, your own class) as its to_s text; under MessagePack it fails the
  # reply." An endless lazy enumerator is not walked, and a result whose
  # ==, hash and eql? raise is never compared.
  def test_objects_without_a_wire_form_are_to_s_text_under_json_and_fail_under_msgpack
    expected_text = {
      "enumerator" => /\A#<Enumerator:/,
      "lazy" => /\A#<Enumerator::Lazy:/,
      "struct" => Regexp.new("\\A#{Regexp.escape(Struct.new(:a).new(1).to_s)}\\z"),
      "set" => Regexp.new("\\A#{Regexp.escape(Set[1, 2].to_s)}\\z"),
      "rational" => /\A1\/3\z/,
      "complex" => /\A1\+2i\z/,
      "bigdecimal" => Regexp.new("\\A#{Regexp.escape(BigDecimal('0.1').to_s)}\\z"),
      "touchy" => /\A#<Touchy:/
    }
    CODECS.each do |codec|
      w = spawn(codec)
      expected_text.each_with_index do |(kind, text), i|
        reply = w.call(i + 1, "value", { "kind" => kind })
        if codec == "json"
          assert_match text, assert_ok(reply, i + 1), kind
        else
          error = assert_failed(reply, i + 1, "NoMethodError")
          assert_match(/\Aresult cannot be encoded as msgpack: .*to_msgpack/, error["message"], kind)
        end
      end
      assert_serving(w, 100)
    end
  end

  # README, Codecs: strings go out as str (text) or bin (binary). Text in
  # another encoding than UTF-8 (Shift_JIS, UTF-16LE, EUC-JP), values and
  # keys, reaches the pool as the same characters in UTF-8; symbols as
  # their names; a frozen 4 MiB string whole. A binary string with high
  # bytes is bin under MessagePack and a failed reply under JSON (no binary
  # type); bytes that are not valid in their encoding are a failed reply in
  # both codecs, of the error the README names.
  def test_text_in_other_encodings_reaches_the_pool_as_utf8
    CODECS.each do |codec|
      w = spawn(codec)
      text = {
        "shift_jis" => { "日本" => "東京" },
        "utf16le" => { "k" => "日本" },
        "euc_jp" => ["日本"],
        "symbols" => { "sym_key" => "sym_value", "list" => %w[a b] },
        "binary_ascii" => "abc"
      }
      text.each_with_index do |(kind, want), i|
        got = assert_ok(w.call(i + 1, "value", { "kind" => kind }), i + 1)
        assert_equal want, got, "#{codec} #{kind}"
      end
      huge = assert_ok(w.call(10, "value", { "kind" => "frozen_huge" }), 10)
      assert_equal 4 * 1024 * 1024, huge.bytesize
      assert_equal "z" * 8, huge[-8..]
      high = w.call(11, "value", { "kind" => "binary_high" })
      bad = w.call(12, "value", { "kind" => "bad_shift_jis" })
      if codec == "json"
        assert_failed(high, 11, "JSON::GeneratorError")
        assert_failed(bad, 12, "JSON::GeneratorError")
      else
        assert_equal "\xFF\xFE\x00A".b, assert_ok(high, 11)
        assert_equal Encoding::BINARY, high["result"].encoding
        assert_failed(bad, 12, "SnakepitBridge::EncodeError")
      end
      assert_serving(w, 13)
    end
  end

  # README, Codecs: "An error's message and traceback always go out as
  # valid UTF-8: invalid bytes become U+FFFD." A message that is valid text
  # in another encoding keeps its characters, also in Ruby's dummy
  # encodings (UTF-16 and UTF-32 with a BOM, ISO-2022-JP), which used to
  # go out as their raw bytes read as UTF-8, replacement characters.
  def test_an_error_message_in_another_encoding_keeps_its_text
    CODECS.each do |codec|
      w = spawn(codec)
      %w[Shift_JIS UTF-16LE UTF-16 UTF-32 ISO-2022-JP EUC-JP].each_with_index do |encoding, i|
        error = assert_failed(w.call(i + 1, "raise_in_encoding", { "encoding" => encoding }), i + 1, "ArgumentError")
        assert_equal "エラー: 日本", error["message"], "#{codec} #{encoding}"
      end
      # No converter from UTF-7: the bytes, as UTF-8.
      error = assert_failed(w.call(20, "raise_in_encoding", { "encoding" => "UTF-7", "tag" => true }),
                            20, "ArgumentError")
      assert_equal "plain words", error["message"]
      assert_serving(w, 21)
    end
  end

  # README, Standard output: "`puts`, `print`, `STDOUT.write`, C extensions
  # and child processes all write to the log". Also IO.new(1) and
  # IO.for_fd(1) (closed, and collected by GC), syswrite and a spawned
  # child told to write to fd 1: the frames stay whole and in order, and
  # nothing but frames reaches the pool's end.
  def test_every_way_to_write_to_stdout_from_a_handler_goes_to_stderr
    w = spawn("json")
    tags = %w[first second third]
    tags.each_with_index do |tag, i|
      assert_equal "clean", assert_ok(w.call(i + 1, "print_everywhere", { "tag" => tag }), i + 1)
    end
    assert_serving(w, 10)
    assert_equal "", w.drain_stdout(0.2), "bytes that are no frame reached the pool"
    markers = %w[puts print $stdout.write $stdout<< STDOUT.write STDOUT.syswrite IO.for_fd(1).write child spawned]
    log = w.stderr_until("third:spawned", timeout: 30)
    tags.product(markers).each { |tag, marker| assert_includes log, "#{tag}:#{marker}\n" }
  end

  # The reader is fed one byte per read (every frame split at every byte),
  # then two and three: a zero-length frame is a payload of its own (the
  # worker answers it as undecodable), a frame of exactly the limit is read,
  # one above it (a length of 2^32 - 1 too) raises FrameTooLarge once and
  # is skipped as it arrives, and the end of the stream while skipping is
  # the end of input.
  def test_the_frame_reader_split_at_every_byte_keeps_frames_empty_and_oversized_in_step
    max = 16
    stream = SnakepitBridge::Wire.frame("a") + [0].pack("N") +
             [20].pack("N") + ("x" * 20) + SnakepitBridge::Wire.frame("b") +
             SnakepitBridge::Wire.frame("c" * max) + [0xFFFF_FFFF].pack("N") + "yyy"
    [1, 2, 3].each do |step|
      reader = SnakepitBridge::Wire::FrameReader.new(TrickleIO.new(stream, step), max)
      seen = []
      loop do
        payload = reader.read_frame
        seen << payload
        break if payload.nil?
      rescue SnakepitBridge::FrameTooLarge => e
        seen << [:too_large, e.size]
      end
      assert_equal ["a", "", [:too_large, 20], "b", "c" * max, [:too_large, 0xFFFF_FFFF], nil], seen, "step #{step}"
    end
  end

  # An IO whose every read returns at most +step+ bytes.
  class TrickleIO
    def initialize(data, step)
      @data = data.b
      @step = step
    end

    def readpartial(_max)
      raise EOFError if @data.empty?

      @data.slice!(0, @step)
    end
  end

  # protocol.md section 4: a length above the limit is answered with a
  # ProtocolError (id 0) and its payload discarded as it arrives, so a
  # request inside the announced 2^32 - 1 bytes is never run; the stream
  # ending inside it is the end of stdin: exit 0, nothing more sent.
  def test_a_frame_announcing_four_gib_swallows_what_follows_and_eof_exits_0
    CODECS.each do |codec|
      w = spawn(codec)
      w.send_raw([0xFFFF_FFFF].pack("N"))
      error = assert_failed(w.recv, 0, "ProtocolError")
      assert_includes error["message"], "4294967295"
      w.request(1, "echo", { "inside" => "the oversized frame" })
      w.close_stdin
      status = w.wait(30)
      refute_nil status, "the worker did not exit"
      assert_equal 0, status.exitstatus
      assert_equal "", w.drain_stdout(0.1), "the request inside the oversized frame was answered"
    end
  end

  # README, Concurrency and cancellation (pipeline): cancels for a call
  # waiting, running, already finished and never sent, written together
  # behind the calls while the first runs. Only the waiting one is taken
  # out, answered Cancelled without running; the running call (no host
  # call in progress, so only SIGINT stops it) finishes, the others are
  # ignored, and every id gets one reply.
  def test_cancels_for_calls_waiting_running_finished_and_never_sent
    w = spawn("json")
    assert_equal({ "n" => 0 }, assert_ok(w.call(1, "echo", { "n" => 0 }), 1))
    w.request(2, "sleep", { "seconds" => 0.3 })
    assert_includes w.stderr_until("request 2 sleeps", timeout: 30), "request 2 sleeps"
    frames = [
      { "id" => 3, "command" => "echo", "args" => { "n" => 3 } },
      { "id" => 4, "command" => "echo", "args" => { "n" => 4 } },
      { "type" => "cancel", "id" => 4 }, # waiting
      { "type" => "cancel", "id" => 2 }, # running
      { "type" => "cancel", "id" => 1 }, # finished
      { "type" => "cancel", "id" => 99 } # never sent
    ]
    codec = SnakepitBridge::Wire.codec("json")
    w.send_raw(frames.map { |f| SnakepitBridge::Wire.frame(codec.encode(f)) }.join)
    replies = Array.new(3) { w.recv }
    assert_equal [2, 4, 3], replies.map { |r| r["id"] }, replies.inspect
    assert_equal "slept", assert_ok(replies[0], 2)
    assert_equal "request 4 was cancelled before it started", assert_failed(replies[1], 4, "Cancelled")["message"]
    assert_equal({ "n" => 3 }, assert_ok(replies[2], 3))
    assert_serving(w, 5)
    assert_equal "", w.drain_stdout(0.1)
  end

  # protocol.md section 4: "a `type` the worker does not know" is a
  # ProtocolError (id 0), and "A MessagePack `bin` is not a string". A bin
  # type spelling "request", "cancel" or "host_reply" used to be acted on
  # as that type (Ruby's == compares the bytes); the Python and Node.js
  # bridges refuse it. Here the bin cancel leaves its request to run.
  def test_a_frame_whose_type_is_a_msgpack_bin_is_a_protocol_error
    skip "needs the msgpack gem" unless MSGPACK
    w = spawn("msgpack")
    packed = ->(message) { SnakepitBridge::Wire.frame(MessagePack.pack(message)) }
    w.send_raw(packed[{ "type" => "request".b, "id" => 1, "command" => "echo", "args" => {} }])
    assert_includes assert_failed(w.recv, 0, "ProtocolError")["message"], "unknown frame type"
    w.request(2, "sleep", { "seconds" => 0.2 })
    assert_includes w.stderr_until("request 2 sleeps", timeout: 30), "request 2 sleeps"
    w.send_raw(packed[{ "id" => 3, "command" => "echo", "args" => { "n" => 3 } }] +
               packed[{ "type" => "cancel".b, "id" => 3 }] +
               packed[{ "type" => "host_reply".b, "id" => 1, "success" => true }])
    replies = Array.new(4) { w.recv }
    assert_equal "slept", assert_ok(replies[0], 2)
    assert_failed(replies[1], 0, "ProtocolError")
    assert_failed(replies[2], 0, "ProtocolError")
    assert_equal({ "n" => 3 }, assert_ok(replies[3], 3))
    assert_serving(w, 4)
  end

  # protocol.md section 4: a frame of a type the worker does not know gets
  # a ProtocolError. Its message quoted the whole type, however long (here
  # 300 KB of control characters, six bytes each once quoted): a reply six
  # times the size of the frame it answers, which past 64 MiB the pool
  # refuses. The quote is now cut short.
  def test_the_protocol_error_for_an_unknown_type_quotes_it_briefly
    CODECS.each do |codec|
      w = spawn(codec)
      long_type = "\u0001" * 300_000
      w.send_message({ "type" => long_type, "id" => 1 })
      message = assert_failed(w.recv, 0, "ProtocolError")["message"]
      assert_operator message.bytesize, :<, 1000
      assert_includes message, "(300000 bytes)"
      w.send_message({ "type" => { "k" => "v" * 300_000 }, "id" => 2 })
      assert_operator assert_failed(w.recv, 0, "ProtocolError")["message"].bytesize, :<, 1000
      assert_serving(w, 3)
    end
  end

  # docs/bridges.md, Ruby: its example worker, run exactly as written, in
  # both codecs: puts goes to stderr, chunks before the reply only for a
  # stream, session state through host calls, ZeroDivisionError a failed
  # reply.
  def test_the_ruby_example_of_bridges_md_runs_as_written
    section = File.read(BRIDGES_MD)[/^## Ruby\n(.*?)^## /m, 1]
    source = section && section[/```ruby\n(.*?)```/m, 1]
    refute_nil source, "docs/bridges.md has a Ruby example"
    @dir = Dir.mktmpdir("snakepit-ruby-round4-")
    script = File.join(@dir, "worker.rb")
    File.write(script, source)
    CODECS.each do |codec|
      w = spawn(codec, script: script)
      assert_equal({ "greeting" => "Hello, Ada!" }, assert_ok(w.call(1, "greet", { "name" => "Ada" }), 1))
      assert_includes w.stderr_until("greeting Ada"), "greeting Ada\n"

      w.request(2, "count", { "to" => 3 }, stream: true)
      frames = Array.new(4) { w.recv }
      assert_equal [["chunk", 2, 1], ["chunk", 2, 2], ["chunk", 2, 3]],
                   frames[0, 3].map { |f| [f["type"], f["id"], f["data"]] }
      assert_equal({ "counted" => 3 }, assert_ok(frames[3], 2))
      assert_equal({ "counted" => 2 }, assert_ok(w.call(3, "count", { "to" => 2 }), 3), "no chunk without stream")

      store = {}
      w.request(4, "visits", {}, session_id: "s1")
      reply = nil
      until reply
        frame = w.recv
        if frame["type"] == "host_call"
          assert_equal 4, frame["request_id"]
          key = frame["args"]["key"]
          result = frame["function"] == "session.get" ? store[key] : (store[key] = frame["args"]["value"]; nil)
          w.send_message({ "type" => "host_reply", "id" => frame["id"], "success" => true, "result" => result })
        else
          reply = frame
        end
      end
      assert_equal({ "visits" => 1 }, assert_ok(reply, 4))
      assert_equal({ "visits" => 1 }, store)

      assert_failed(w.call(5, "divide", { "a" => 1, "b" => 0 }), 5, "ZeroDivisionError")
      assert_equal 2, assert_ok(w.call(6, "divide", { "a" => 4, "b" => 2 }), 6)
    end
  end

  # docs/preload.md: its Ruby example, as written, started directly (the
  # hook runs there too), with load_model and connect_to_database given by
  # a file required first. A one-parameter block gets the args.
  def test_the_ruby_example_of_preload_md_runs_as_written
    source = File.read(File.expand_path("../../../docs/preload.md", __dir__))[/```ruby\n(.*?)```/m, 1]
    refute_nil source, "docs/preload.md has a Ruby example"
    @dir = Dir.mktmpdir("snakepit-ruby-round4-")
    script = File.join(@dir, "worker.rb")
    File.write(script, source)
    prelude = File.join(@dir, "prelude.rb")
    File.write(prelude, <<~RUBY)
      Model = Struct.new(:path) { def predict(x) = [path, x * 2] }
      def load_model(path) = Model.new(path)
      def connect_to_database = $stderr.puts("connected in \#{Process.pid}")
    RUBY
    CODECS.each do |codec|
      w = spawn(codec, script: script, ruby_args: ["-r", prelude])
      assert_includes w.stderr_until("connected in #{w.pid}"), "connected in #{w.pid}"
      assert_equal ["model.bin", 42], assert_ok(w.call(1, "predict", { "x" => 21 }), 1)
    end
  end

  # README: "SIGTERM or the end of stdin stops the worker with exit status
  # 0"; protocol.md: "A worker exits cleanly on SIGTERM". A SIGTERM while an
  # after_fork hook runs (the pool stopping a worker that is still
  # starting) used to be reported as a failed hook, with status 1.
  def test_sigterm_while_an_after_fork_hook_runs_exits_0
    w = spawn("json", env: { "ROUND4_HOOK_SLEEP" => "60" }, expect_hello: false)
    assert_includes w.stderr_until("hook started", timeout: 30), "hook started"
    w.signal("TERM")
    status = w.wait(30)
    refute_nil status, "the worker did not exit on SIGTERM"
    assert_equal 0, status.exitstatus, "#{status.inspect}; stderr:\n#{w.stderr}"
    refute_includes w.stderr, "hook failed"
    assert_equal "", w.drain_stdout(0.1), "no hello: the worker never started serving"
  end

  # README, Concurrency and cancellation: SIGINT between handlers is
  # ignored, during one cancels it. A storm of SIGINTs while 4 MiB replies
  # are written and a 1 MiB request is read: every call gets exactly one
  # whole reply under its id (its result or Cancelled), in order, and the
  # worker serves on.
  def test_a_sigint_storm_while_large_frames_are_read_and_written_keeps_one_whole_reply_each
    w = spawn("json")
    size = 4 * 1024 * 1024
    replies = w.during_sigint_storm(every: 0.002) do
      (1..6).map do |id|
        if id.even?
          w.call(id, "echo", { "blob" => "r" * (1024 * 1024) })
        else
          w.call(id, "big", { "bytes" => size })
        end
      end
    end
    replies.each_with_index do |reply, i|
      id = i + 1
      assert_equal id, reply["id"]
      next assert_failed(reply, id, "Cancelled") unless reply["success"]

      want = id.even? ? { "blob" => "r" * (1024 * 1024) } : "b" * size
      assert_equal want, reply["result"], "reply #{id} is not whole"
    end
    assert_serving(w, 7)
    assert_equal "", w.drain_stdout(0.1)
  end
end

# README, Preloading: "Hooks run in registration order, once in each
# worker process ... A hook gets the worker if it takes an argument", for
# every kind of callable; and the README's own logger hook, as written.
class OutsideRound4HooksTest < Minitest::Test
  # A method taking the worker.
  def self.record_worker(worker)
    CALLS << [:method, worker.class]
  end

  CALLS = [] # rubocop:disable Style/MutableConstant -- filled by the hooks

  def test_each_kind_of_hook_gets_the_worker_exactly_when_it_takes_an_argument
    CALLS.clear
    out = StringIO.new
    worker = SnakepitBridge::Worker.new(codec: "json", input: StringIO.new(+""), output: out)
    worker.after_fork { CALLS << [:block0] }
    worker.after_fork { |w| CALLS << [:block1, w.class] }
    worker.after_fork(-> { CALLS << [:lambda0] })
    worker.after_fork(->(w) { CALLS << [:lambda1, w.class] })
    worker.after_fork(->(w = nil) { CALLS << [:lambda_optional, w.class] })
    worker.after_fork(method(:hook_without_argument))
    worker.after_fork(self.class.method(:record_worker))
    callable = Object.new
    def callable.call(w)
      CALLS << [:object, w.class]
    end
    worker.after_fork(callable)
    assert_nil worker.run # stdin is empty: runs the hooks, says hello, returns
    w = SnakepitBridge::Worker
    assert_equal [[:block0], [:block1, w], [:lambda0], [:lambda1, w], [:lambda_optional, w],
                  [:method0], [:method, w], [:object, w]], CALLS
    payload = SnakepitBridge::Wire.read_frame(StringIO.new(out.string))
    assert_equal "hello", JSON.parse(payload)["type"], "the hooks ran before the hello"
  end

  def hook_without_argument
    CALLS << [:method0]
  end

  def test_the_readme_logger_hook_runs_as_written
    line = File.read(File.join(TestPaths::BRIDGE_DIR, "README.md"))[/^worker\.after_fork \{ \|w\| .*\}$/]
    refute_nil line, "the README's logger hook"
    Dir.mktmpdir("snakepit-ruby-round4-") do |dir|
      script = File.join(dir, "worker.rb")
      File.write(script, "require \"snakepit_bridge\"\nworker = SnakepitBridge::Worker.new\n#{line}\nworker.run\n")
      w = WorkerProcess.new(script, env: { "SNAKEPIT_WORKER_ID" => "pool_worker_4_1" })
      begin
        assert_includes w.stderr_until("is up"), "INFO [pool_worker_4_1] worker pool_worker_4_1 is up"
      ensure
        w.stop
      end
    end
  end
end

# docs/preload.md, "Bad input" and "Serving a fork request": hostile
# messages to the template, beyond those of preload_test.rb.
class OutsideRound4PreloadTest < Minitest::Test
  def setup
    @template = TemplateProcess.new
    @workers = []
  end

  def teardown
    @workers.each(&:stop)
    @template.stop
  end

  # "set every variable of env ..., then remove SNAKEPIT_PRELOAD (last, so
  # that no env can make a worker a template)"; "a missing or null env is
  # {}"; any integer is an id, however large.
  def test_a_fork_request_cannot_make_its_worker_a_template
    worker = ForkedWorker.new(@template, 1, env: { "SNAKEPIT_PRELOAD" => "1" }).tap { |w| @workers << w }
    assert_equal "hello", worker.receive_hello["type"]
    assert_nil worker.call(1, "state")["result"]["preload_env"]

    r_in, w_in = IO.pipe
    r_out, w_out = IO.pipe
    r_err, w_err = IO.pipe
    @template.send_message({ "op" => "fork", "id" => 2**70, "env" => nil }, [r_in, w_out, w_err])
    [r_in, w_out, w_err].each(&:close)
    reply = @template.fork_reply(2**70)
    assert_equal "forked", reply["op"], reply.inspect
    codec = SnakepitBridge::Wire.codec("json")
    w_in.write(SnakepitBridge::Wire.frame(codec.encode({ "id" => 1, "command" => "ping", "args" => {} })))
    w_in.close
    frames = []
    assert IO.select([r_out], nil, nil, 30), "the worker of a null env said nothing"
    while (payload = SnakepitBridge::Wire.read_frame(r_out))
      frames << codec.decode(payload)
    end
    assert_equal %w[hello ok], frames.map { |f| f["type"] || f.dig("result", "status") }
    r_err.close
  end

  # "Its stdin (descriptor 0) is one end of a SOCK_SEQPACKET Unix socket
  # pair": a stream socket (whose messages have no bounds) is refused at
  # start-up with status 1, before the script's run does anything.
  def test_a_template_on_a_stream_socket_stops_at_start_up
    ours, theirs = UNIXSocket.pair(:STREAM)
    err_r, err_w = IO.pipe
    pid = Process.spawn({ "SNAKEPIT_PRELOAD" => "1", "RUBYLIB" => TestPaths::BRIDGE_DIR },
                        RbConfig.ruby, PRELOAD_WORKER, in: theirs, out: err_w, err: err_w)
    [theirs, err_w].each(&:close)
    log = Thread.new { err_r.read }
    _, status = Process.wait2(pid)
    assert_equal 1, status.exitstatus
    assert_includes log.value, "stdin is not a SOCK_SEQPACKET socket"
    assert_nil ours.read_nonblock(1, exception: false), "the template sent something"
  ensure
    ours&.close
  end

  # "A message the template cannot use ... is reported on its stderr ...
  # and the template goes on serving"; "When its socket reaches end of file
  # ... the template exits with status 0". Also when its log can no longer
  # be written: reporting the bad message used to end the template with
  # status 1 (EPIPE, raised again while reporting that).
  def test_a_template_whose_log_is_closed_survives_bad_input_and_exits_0
    ours, theirs = UNIXSocket.pair(:SEQPACKET)
    log_r, log_w = IO.pipe
    pid = Process.spawn({ "SNAKEPIT_PRELOAD" => "1", "RUBYLIB" => TestPaths::BRIDGE_DIR, "SNAKEPIT_CODEC" => "json" },
                        RbConfig.ruby, PRELOAD_WORKER, in: theirs, out: log_w, err: log_w)
    [theirs, log_w].each(&:close)
    waiter = Thread.new { Process.wait2(pid)[1] }
    assert IO.select([ours], nil, nil, 30), "no ready message"
    assert_equal "ready", JSON.parse(ours.recvmsg(65_536)[0])["op"]
    log_r.close
    ours.sendmsg("not json")
    ours.sendmsg(JSON.generate({ "op" => "bogus" }))
    child_in, to_worker = IO.pipe
    from_worker, child_out = IO.pipe
    err_r, child_err = IO.pipe
    ours.sendmsg(JSON.generate({ "op" => "fork", "id" => 1, "env" => {} }), 0, nil,
                 Socket::AncillaryData.unix_rights(child_in, child_out, child_err))
    [child_in, child_out, child_err].each(&:close)
    assert IO.select([ours], nil, nil, 30), "no answer to the fork request"
    assert_equal "forked", JSON.parse(ours.recvmsg(65_536)[0])["op"]
    assert IO.select([from_worker], nil, nil, 30), "the worker sent no hello"
    assert_equal "hello", JSON.parse(SnakepitBridge::Wire.read_frame(from_worker))["type"]
    to_worker.close
    ours.close
    status = waiter.join(30)&.value
    refute_nil status, "the template did not exit at the end of its socket"
    assert_equal 0, status.exitstatus, status.inspect
  ensure
    [ours, to_worker, from_worker, err_r].each { |io| io&.close unless io&.closed? }
    Process.kill("KILL", pid) if pid && waiter&.alive?
  end

  # "A message the template cannot use (not JSON ...) is reported on its
  # stderr, every descriptor that came with it is closed, ... and the
  # template goes on serving": also a datagram longer than 64 KiB with three
  # descriptors, JSON nested far deeper than its parser allows, and an
  # empty datagram carrying descriptors.
  def test_oversized_deep_and_empty_messages_with_descriptors_are_refused
    probes = []
    send_with = lambda do |data, count|
      ios = Array.new(count) do
        r, w = IO.pipe
        probes << r
        w
      end
      @template.send_message(data, ios)
      ios.each(&:close)
    end
    big = JSON.generate({ "op" => "fork", "id" => 5, "env" => { "PAD" => "p" * 70_000 } })
    send_with.call(big, 3)
    send_with.call(("[" * 10_000) + ("]" * 10_000), 3)
    send_with.call("", 1)
    worker = ForkedWorker.new(@template, 6).tap { |w| @workers << w }
    assert_equal "hello", worker.receive_hello["type"]
    assert_equal "ok", worker.call(1, "ping")["result"]["status"]
    assert_empty @template.unclaimed, "a message without a usable id was answered"
    probes.each_with_index do |r, i|
      assert IO.select([r], nil, nil, 10), "descriptor #{i} is still open in the template"
      assert_nil r.read_nonblock(1, exception: false), "descriptor #{i} is still open in the template"
    end
    log = @template.log_with("longer than 65536", "not valid JSON")
    assert_includes log, "longer than 65536"
    assert_includes log, "not valid JSON"
    assert_nil @template.wait(0), "the template is still running"
  end
end
