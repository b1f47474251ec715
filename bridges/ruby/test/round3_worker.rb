# frozen_string_literal: true

# The worker of outside_round3_test.rb: the generic commands, and handlers
# that misbehave on request (results no codec can write, exceptions that are
# not StandardErrors, host calls whose replies are hostile, a stream the
# pool does not read).
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
SnakepitBridge::Generic.register(worker)

# An exception whose #message raises an exception of the given class.
class MessageRaises < StandardError
  def initialize(raised)
    super("never read")
    @raised = raised
  end

  def message
    raise @raised, "raised by #message"
  end
end

# An Interrupt of the handler's own, not the bridge's Cancelled.
class HandlerStop < Interrupt; end

# A value whose text form raises: JSON writes other objects as their #to_s.
class ToSRaises
  def initialize(raised)
    @raised = raised
  end

  def to_s(*)
    raise @raised, "raised by #to_s"
  end
  alias to_json to_s
  alias to_msgpack to_s
end

RAISABLE = { "Exception" => Exception, "Interrupt" => Interrupt, "NoMemoryError" => NoMemoryError,
             "StandardError" => StandardError }.freeze

worker.command("result") do |args, _ctx|
  case args.fetch("kind")
  when "proc" then { "value" => proc { 1 } }
  when "io" then { "value" => $stderr }
  when "cyclic_array" then [].tap { |a| a << a }
  when "cyclic_hash" then {}.tap { |h| h["self"] = h }
  when "nan" then { "value" => Float::NAN }
  when "to_s_raises" then { "value" => ToSRaises.new(RAISABLE.fetch(args.fetch("raised"))) }
  end
end

worker.command("raise") do |args, _ctx|
  case args.fetch("kind")
  when "exception" then raise Exception, "plain Exception"
  when "interrupt_subclass" then raise HandlerStop, "the handler's own Interrupt"
  when "message_raises" then raise MessageRaises, RAISABLE.fetch(args.fetch("raised"))
  end
end

# Returns what the host call gave: its result, or the HostCallError's type
# and message (made valid UTF-8, so that JSON can carry them too).
worker.command("ask") do |_args, ctx|
  { "result" => ctx.call_host("f", {}) }
rescue SnakepitBridge::HostCallError => e
  { "type" => e.error_type.to_s.dup.force_encoding(Encoding::UTF_8).scrub,
    "message" => e.message.to_s.dup.force_encoding(Encoding::UTF_8).scrub,
    "strings" => e.error_type.is_a?(String) && e.message.is_a?(String) }
end

# The worker's id as the handler sees it, after a log line that is not
# ASCII (the logger writes the id into every line).
worker.command("worker_id") do |_args, ctx|
  ctx.logger.info("journal: état du worker")
  id = ctx.worker_id
  { "worker_id" => id && id.dup.force_encoding(Encoding::UTF_8).scrub, "encoding" => id&.encoding&.name }
end

# Chunks of 64 KiB until the call is answered: a pool that does not read
# stdout leaves the worker blocked in a frame write.
worker.command("flood") do |_args, ctx|
  $stderr.puts "flood: started"
  $stderr.flush
  data = "x" * 65_536
  loop { ctx.chunk(data) }
end

worker.run
