# frozen_string_literal: true

# Lets `require "snakepit_bridge"` work when the bridge directory itself
# (rather than its lib/) is on RUBYLIB, as a Snakepit pool sets it.
require_relative "lib/snakepit_bridge"
