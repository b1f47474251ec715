# frozen_string_literal: true

require_relative "lib/snakepit_bridge"

Gem::Specification.new do |spec|
  spec.name = "snakepit_bridge"
  spec.version = SnakepitBridge::VERSION
  spec.summary = "Worker side of Snakepit: serve Ruby commands to a Snakepit pool over stdin/stdout"
  spec.description = <<~TEXT
    Length-prefixed JSON or MessagePack frames on stdin/stdout, a command
    registry, streaming, host calls (session store) and SIGINT cancellation
    for Ruby workers managed by a Snakepit pool. The msgpack codec needs the
    optional msgpack gem (Debian: ruby-msgpack).
  TEXT
  spec.authors = ["Snakepit contributors"]
  # Dual-licensed: the user picks either (SPDX: MIT OR Apache-2.0).
  spec.licenses = ["MIT", "Apache-2.0"]
  spec.homepage = "https://github.com/snakepit-rs/snakepit"
  spec.required_ruby_version = ">= 3.0"
  spec.files = Dir.chdir(__dir__) do
    Dir["lib/**/*.rb"] + %w[generic_worker.rb snakepit_bridge.rb README.md LICENSE-MIT LICENSE-APACHE]
  end
  spec.require_paths = ["lib"]
  spec.metadata["rubygems_mfa_required"] = "true"
  spec.metadata["source_code_uri"] = "https://github.com/snakepit-rs/snakepit/tree/main/bridges/ruby"
  # No runtime dependencies: msgpack is optional and loaded only when the
  # msgpack codec is chosen (SNAKEPIT_CODEC=msgpack).
end
