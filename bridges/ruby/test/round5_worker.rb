#!/usr/bin/env ruby
# frozen_string_literal: true

# The worker test/outside_round5_test.rb runs: results, errors, chunks and
# host-call arguments of a size the test picks, to meet the pool's frame
# limit (SNAKEPIT_MAX_FRAME_SIZE), and text in UTF-16 and UTF-32.
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new

worker.command("limit") { |_args, _ctx| worker.max_frame_size }
worker.command("big") { |args, _ctx| "x" * args.fetch("n") }
worker.command("fail") { |args, _ctx| raise ArgumentError, "e" * args.fetch("n") }
worker.command("echo") { |args, _ctx| args }

worker.command("chunks") do |args, ctx|
  first = ctx.chunk("small")
  large = ctx.chunk("y" * args.fetch("n"))
  after = ctx.chunk("after")
  $stderr.puts "round5: chunk gave #{first} #{large} #{after}"
  "the end"
end

worker.command("chunk_then_host") do |args, ctx|
  ctx.chunk("y" * args.fetch("n"))
  begin
    ctx.call_host("session.get", { "key" => "k" })
    $stderr.puts "round5: host call after the chunk went out"
  rescue SnakepitBridge::Cancelled => e
    $stderr.puts "round5: host call after the chunk raised #{e.class}: #{e.message}"
  end
  "dropped"
end

worker.command("host") do |args, ctx|
  ctx.call_host("session.get", { "key" => "k" * args.fetch("n") })
  "sent"
rescue SnakepitBridge::HostCallError => e
  { "class" => e.class.name, "type" => e.error_type, "message" => e.message }
end

worker.command("host_uncaught") do |args, ctx|
  ctx.call_host("session.get", { "key" => "k" * args.fetch("n") })
end

# Text with a byte order mark: Ruby's UTF-16 and UTF-32 (dummy encodings)
# start with one; UTF-16LE holds U+FEFF only as a character of the text.
worker.command("marked") do |_args, _ctx|
  {
    "utf16" => "日本".encode("UTF-16"),
    "utf32" => "日本".encode("UTF-32"),
    "日本".encode("UTF-16") => "as a key",
    "list" => ["a".encode("UTF-16BE"), "b".encode("UTF-16")],
    "zwnbsp" => "\uFEFFword".encode("UTF-16LE")
  }
end

worker.run
