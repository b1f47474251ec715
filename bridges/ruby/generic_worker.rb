#!/usr/bin/env ruby
# frozen_string_literal: true

# The generic Snakepit worker: serves ping, echo, compute and info.
#
#   ruby generic_worker.rb --mode pool-worker
#
# Runs from a plain checkout; arguments (--mode, --snakepit-run-id, ...)
# are accepted and ignored. The codec comes from SNAKEPIT_CODEC.
$LOAD_PATH.unshift(File.expand_path("lib", __dir__))
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
SnakepitBridge::Generic.register(worker)
worker.run
