#!/usr/bin/env ruby
# frozen_string_literal: true

# The worker of outside_round4_test.rb: handlers that return values the
# codecs treat in their own ways, raise exceptions whose class misbehaves,
# write to stdout every way Ruby offers, or close stderr.
require "snakepit_bridge"
require "set"
require "bigdecimal"

worker = SnakepitBridge::Worker.new
if ENV["ROUND4_HOOK_SLEEP"]
  worker.after_fork do
    $stderr.puts "round4_worker: hook started"
    sleep Float(ENV["ROUND4_HOOK_SLEEP"])
  end
end

# An exception class whose own .name raises.
class NameRaises < StandardError
  def self.name
    raise "no name for you"
  end
end

# An anonymous-looking class: .name is nil and .to_s raises.
class ToSRaises < StandardError
  def self.name
    nil
  end

  def self.to_s
    raise Exception, "no text either"
  end
end

# An exception class whose .name is not a String.
class NameIsANumber < StandardError
  def self.name
    42
  end
end

# Keys and values whose own methods raise: the codecs must not call them.
class Touchy
  def ==(_other)
    raise "== called"
  end

  def hash
    raise "hash called"
  end

  def eql?(_other)
    raise "eql? called"
  end
end

VALUES = {
  "enumerator" => -> { [1, 2].each },
  "lazy" => -> { (1..Float::INFINITY).lazy.map { |i| i * 2 } },
  "struct" => -> { Struct.new(:a).new(1) },
  "set" => -> { Set[1, 2] },
  "rational" => -> { Rational(1, 3) },
  "complex" => -> { Complex(1, 2) },
  "bigdecimal" => -> { BigDecimal("0.1") },
  "touchy" => -> { Touchy.new },
  "shift_jis" => -> { { "日本".encode("Shift_JIS") => "東京".encode("Shift_JIS") } },
  "utf16le" => -> { { "k".encode("UTF-16LE") => "日本".encode("UTF-16LE") } },
  "euc_jp" => -> { ["日本".encode("EUC-JP")] },
  "binary_high" => -> { "\xFF\xFE\x00A".b },
  "binary_ascii" => -> { "abc".b },
  "bad_shift_jis" => -> { "\x82".dup.force_encoding(Encoding::Shift_JIS) },
  "symbols" => -> { { sym_key: :sym_value, "list" => %i[a b] } },
  "frozen_huge" => -> { ("z" * (4 * 1024 * 1024)).freeze }
}.freeze

worker.command("value") { |args, _ctx| VALUES.fetch(args.fetch("kind")).call }

worker.command("raise_odd_class") do |args, _ctx|
  raise({ "name_raises" => NameRaises, "to_s_raises" => ToSRaises,
          "name_is_a_number" => NameIsANumber }.fetch(args.fetch("kind")), "odd class")
end

# An error whose message is text in another encoding.
# With "tag": true, ASCII text only tagged with the encoding (for one
# that Ruby cannot convert, such as UTF-7).
worker.command("raise_in_encoding") do |args, _ctx|
  encoding = args.fetch("encoding")
  raise ArgumentError, "plain words".dup.force_encoding(encoding) if args["tag"]

  raise ArgumentError, "エラー: 日本".encode(encoding)
end

# Every way a handler can write to stdout; none may reach the frames.
worker.command("print_everywhere") do |args, _ctx|
  tag = args.fetch("tag")
  puts "#{tag}:puts"
  print "#{tag}:print\n"
  $stdout.write("#{tag}:$stdout.write\n")
  $stdout << "#{tag}:$stdout<<\n"
  STDOUT.write("#{tag}:STDOUT.write\n")
  STDOUT.syswrite("#{tag}:STDOUT.syswrite\n")
  IO.new(1).write("#{tag}:IO.new(1).write\n") # buffered; flushed when collected
  io = IO.for_fd(1)
  io.write("#{tag}:IO.for_fd(1).write\n")
  io.close # closes only what Ruby lets it close: fd 1 stays
  system("echo #{tag}:child")
  pid = Process.spawn("echo", "#{tag}:spawned", out: 1)
  Process.wait(pid)
  $stdout.flush
  GC.start
  "clean"
end

worker.command("close_stderr") do |_args, _ctx|
  $stderr.close
  true
end

worker.command("big") { |args, _ctx| "b" * args.fetch("bytes") }
worker.command("echo") { |args, _ctx| args }
worker.command("sleep") do |args, ctx|
  $stderr.puts "round4_worker: request #{ctx.request_id} sleeps"
  sleep args.fetch("seconds")
  "slept"
end

worker.run
