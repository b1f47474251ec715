# frozen_string_literal: true

require_relative "test_helper"
require "tmpdir"

# The README's worker example must run exactly as written.
class ReadmeTest < Minitest::Test
  README = File.join(TestPaths::BRIDGE_DIR, "README.md")

  def setup
    source = File.read(README)[/```ruby\n(.*?)```/m, 1]
    refute_nil source, "README has a ruby example"
    @dir = Dir.mktmpdir
    @script = File.join(@dir, "my_worker.rb")
    File.write(@script, source)
  end

  def teardown
    @worker&.stop
    FileUtils.remove_entry(@dir)
  end

  %w[json msgpack].each do |codec|
    define_method("test_readme_example_#{codec}") do
      @worker = WorkerProcess.new(@script, codec: codec)
      w = @worker
      assert_equal "ok", w.call(1, "ping", { "initialization" => true, "worker_id" => "w1" })["result"]["status"]

      greeting = w.call(2, "greet", { "name" => "Ada" })["result"]
      assert_equal "Hello, Ada!", greeting["greeting"]
      assert_match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\z/, greeting["at"])

      w.request(3, "count_to", { "n" => 2 }, stream: true)
      assert_equal [{ "i" => 1 }, { "i" => 2 }], [w.recv["data"], w.recv["data"]]
      assert_equal "done", w.recv["result"]

      w.request(4, "remember", { "value" => 42 })
      get = w.recv
      assert_equal %w[session.get 4], [get["function"], get["request_id"].to_s]
      w.send_message({ "type" => "host_reply", "id" => get["id"], "success" => true, "result" => 41 })
      set = w.recv
      assert_equal ["session.set", { "key" => "last", "value" => 42 }], [set["function"], set["args"]]
      w.send_message({ "type" => "host_reply", "id" => set["id"], "success" => true, "result" => nil })
      assert_equal({ "previous" => 41 }, w.recv["result"])

      error = w.call(5, "check", { "n" => -1 })["error"]
      assert_equal %w[ArgumentError n\ must\ be\ positive], [error["type"], error["message"]]
      assert_equal true, w.call(6, "check", { "n" => 1 })["result"]
      assert_equal "HEY", w.call(7, "shout", { "text" => "hey" })["result"]
      assert_includes w.stderr_until("greeting Ada"), "greeting Ada"
    end
  end
end
