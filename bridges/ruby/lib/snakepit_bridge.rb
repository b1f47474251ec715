# frozen_string_literal: true

# Worker side of Snakepit: a Ruby process that serves commands to a Snakepit
# pool over stdin/stdout (docs/protocol.md of the Snakepit repository).
#
#   require "snakepit_bridge"
#
#   worker = SnakepitBridge::Worker.new
#   worker.command("greet") { |args, ctx| { "hello" => args["name"] } }
#   worker.run
module SnakepitBridge
  VERSION = "0.1.0"
  PROTOCOL_VERSION = 1
  BRIDGE_NAME = "snakepit-ruby"

  # Base class of the errors this library raises.
  class Error < StandardError; end

  # Raised inside a handler whose request was cancelled (SIGINT from the pool
  # or a cancel frame). It is an Interrupt, not a StandardError, so that a
  # handler's plain `rescue => e` does not swallow it.
  class Cancelled < Interrupt
    def initialize(message = "request was cancelled")
      super(message)
    end
  end

  # A host function called through Context#call_host answered with a failure.
  class HostCallError < Error
    # The error type the host reported, e.g. "UnknownFunction".
    attr_reader :error_type

    def initialize(error_type, message)
      super(message)
      @error_type = error_type
    end
  end
end

# require_relative so the library loads whichever directory is on the load
# path (lib/, the bridge root via its shim, or an installed gem).
require_relative "snakepit_bridge/wire"
require_relative "snakepit_bridge/worker"
require_relative "snakepit_bridge/generic"
require_relative "snakepit_bridge/preload"
