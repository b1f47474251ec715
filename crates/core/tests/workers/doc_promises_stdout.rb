# A Ruby worker for crates/adapters/tests/doc_promises.rs: what user code
# writes to standard output goes to stderr, and neither it nor a child
# process can read the pool's frames (docs/bridges.md, "Standard output
# belongs to the protocol").
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

worker.command("outside_output") do |_args, _ctx|
  puts "puts"
  $stdout.write("$stdout.write\n")
  STDOUT.syswrite("STDOUT.syswrite\n")
  system("echo", "a child process")
  {
    "pid" => Process.pid,
    # Descriptor 0 is /dev/null: reading it ends at once, with nothing.
    "stdin" => File.readlink("/proc/self/fd/0"),
    "read" => STDIN.read,
    "child_read" => `cat`,
  }
end

worker.command("pid") { |_args, _ctx| Process.pid }

worker.run
