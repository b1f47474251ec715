# frozen_string_literal: true

module SnakepitBridge
  # The commands of the original Snakepit's generic bridges (ping, echo,
  # compute, info) with the result shapes of protocol.md section 7.
  module Generic
    BRIDGE_TYPE = "generic_ruby"
    OPERATIONS = %w[add subtract multiply divide power sqrt].freeze

    module_function

    # Adds echo, compute and info to +worker+ (every Worker has ping).
    def register(worker)
      worker.command("echo") { |args, _ctx| echo(args) }
      worker.command("compute") { |args, _ctx| compute(args) }
      worker.command("info") { |_args, _ctx| info(worker) }
      worker
    end

    def ping(worker, args)
      {
        "status" => "ok",
        "bridge_type" => BRIDGE_TYPE,
        "uptime" => worker.uptime,
        "requests_handled" => worker.requests_handled,
        "timestamp" => Time.now.to_f,
        "worker_id" => worker.worker_id || "unknown",
        "echo" => args,
        "pid" => Process.pid,
        "ruby_version" => RUBY_VERSION
      }
    end

    def echo(args)
      { "status" => "ok", "echoed" => args, "timestamp" => Time.now.to_f }
    end

    # Failures raise ArgumentError, which the worker turns into a failed
    # reply of type ArgumentError.
    def compute(args)
      operation = args.fetch("operation", "add")
      a = args.fetch("a", 0)
      b = args.fetch("b", 0)
      raise ArgumentError, "Unsupported operation: #{operation}" unless OPERATIONS.include?(operation)
      unless number?(a) && number?(b)
        raise ArgumentError, "Operands a and b must be numbers, got #{a.inspect} and #{b.inspect}"
      end

      {
        "status" => "ok",
        "operation" => operation,
        "inputs" => { "a" => a, "b" => b },
        "result" => calculate(operation, a, b),
        "timestamp" => Time.now.to_f
      }
    end

    def calculate(operation, a, b)
      case operation
      when "add" then a + b
      when "subtract" then a - b
      when "multiply" then a * b
      when "divide"
        raise ArgumentError, "Division by zero" if b.zero?

        # True division as the Python and Node bridges do: 7 / 2 is 3.5.
        a.fdiv(b)
      when "power" then real_power(a, b)
      when "sqrt"
        raise ArgumentError, "Square root of negative number" if a.negative?

        Math.sqrt(a)
      end
    end

    # Integer ** negative Integer is a Rational and a negative base with a
    # fractional exponent a Complex; neither has a wire form.
    def real_power(a, b)
      raise ArgumentError, "Division by zero" if a.zero? && b.negative?

      result = a**b
      result = result.to_f if result.is_a?(Rational)
      raise ArgumentError, "Power of a negative number to a fractional exponent" if result.is_a?(Complex)

      result
    end

    def number?(value)
      value.is_a?(Integer) || value.is_a?(Float)
    end

    def info(worker)
      {
        "status" => "ok",
        "bridge_info" => {
          "name" => "Snakepit Ruby Bridge",
          "version" => VERSION,
          "supported_commands" => worker.commands,
          "uptime" => worker.uptime,
          "total_requests" => worker.requests_handled
        },
        "system_info" => {
          "ruby_version" => RUBY_VERSION,
          "ruby_engine" => RUBY_ENGINE,
          "ruby_platform" => RUBY_PLATFORM,
          "pid" => Process.pid,
          "codec" => worker.codec.name,
          "protocol" => PROTOCOL_VERSION
        },
        "timestamp" => Time.now.to_f
      }
    end
  end
end
