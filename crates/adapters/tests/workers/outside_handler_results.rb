# Handlers that return what the codec cannot carry, raise what is not a
# StandardError, or leave the handler by other ways, for
# outside_handler_results.rs.
require "set"
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

class Plain
  def initialize
    @a = 1
  end
end

def nested(depth)
  value = "leaf"
  (depth - 1).times { value = [value] }
  value
end

def recurse(n)
  recurse(n + 1) + 1
end

worker.command("pid") { |_a, _c| { "pid" => Process.pid } }
worker.command("slow") do |args, _c|
  sleep(args["ms"] / 1000.0)
  { "pid" => Process.pid }
end

# Results the codec cannot carry, or carries oddly.
worker.command("object") { |_a, _c| { "v" => Plain.new } }
worker.command("set") { |_a, _c| { "v" => Set[1, 2] } }
worker.command("invalid_utf8") { |_a, _c| { "v" => "caf\xff".dup.force_encoding(Encoding::UTF_8) } }
worker.command("binary") { |_a, _c| { "v" => "\x00\xff".b } }
worker.command("latin1") { |_a, _c| { "v" => "caf\xe9".dup.force_encoding(Encoding::ISO_8859_1) } }
worker.command("colliding_keys") { |_a, _c| { 1 => "int", "1" => "str", :a => "sym", "a" => "str" } }
worker.command("symbols") { |_a, _c| { a: 1, "b" => :sym } }
worker.command("cycle") do |_a, _c|
  items = []
  items << items
  { "v" => items }
end
worker.command("inf") { |_a, _c| { "v" => Float::INFINITY } }
worker.command("deep") { |args, _c| nested(args["depth"]) }
worker.command("huge") { |args, _c| "x" * args["n"] }

# Ways out of a handler other than a StandardError.
worker.command("raise_exception") { |_a, _c| raise Exception, "a bare Exception" }
worker.command("raise_interrupt") { |_a, _c| raise Interrupt, "raised by the handler itself" }
worker.command("raise_no_memory") { |_a, _c| raise NoMemoryError, "pretend" }
worker.command("throw_symbol") { |_a, _c| throw :nobody_catches }
worker.command("stack_overflow") { |_a, _c| recurse(0) }
worker.command("swallow") do |args, _c|
  # Swallows its cancellation (rescue Exception) and returns late.
  finish = Process.clock_gettime(Process::CLOCK_MONOTONIC) + args["ms"] / 1000.0
  while Process.clock_gettime(Process::CLOCK_MONOTONIC) < finish
    begin
      sleep 0.02
    rescue Exception # rubocop:disable Lint/RescueException -- on purpose
      nil
    end
  end
  { "pid" => Process.pid }
end
worker.command("print") do |args, _c|
  puts args["text"]
  { "pid" => Process.pid }
end
worker.command("close_dollar_stdout") do |_a, _c|
  $stdout.close
  { "pid" => Process.pid }
end
BAD = "caf\xff".dup.force_encoding(Encoding::UTF_8)
worker.command("bad_chunk") do |_a, ctx|
  caught = nil
  begin
    ctx.chunk({ "v" => BAD })
  rescue StandardError => e
    caught = e.class.name
  end
  ctx.chunk("fine")
  { "caught" => caught }
end
worker.command("bad_chunk_uncaught") do |_a, ctx|
  ctx.chunk({ "v" => BAD })
  { "sent" => true }
end
worker.command("exit_bang") do |_a, _c|
  $stderr.puts "leaving by exit!"
  exit!(4)
end
worker.command("exit") do |_a, _c|
  $stderr.puts "leaving by exit"
  exit 3
end
worker.command("close_stdio") do |_a, _c|
  STDOUT.close
  STDIN.close
  { "pid" => Process.pid }
end
worker.command("raw_fd1") do |_a, _c|
  IO.for_fd(1, autoclose: false).syswrite("not a frame\n")
  { "pid" => Process.pid }
end

worker.run
