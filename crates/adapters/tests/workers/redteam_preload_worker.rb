# A worker for crates/adapters/tests/redteam_preload.rs (Ruby): a "model"
# loaded at the top level (so once, in the template, when preloaded).
# RT_MODEL_MB: that many MiB of non-zero bytes; RT_OBJECTS: that many
# distinct strings; RT_FAIL_IF: a path whose existence makes the load raise
# (in load_weights); RT_PRINT: a line printed to stdout at import.
require "digest"
require "snakepit_bridge"

LOADED_IN = Process.pid
$stdout.print(ENV["RT_PRINT"] + "\n") if ENV["RT_PRINT"]

def load_weights(path)
  raise IOError, "redteam weights unreadable: #{path}" if File.exist?(path)
end

load_weights(ENV["RT_FAIL_IF"]) if ENV["RT_FAIL_IF"]

MODEL = ("\x01".b * (ENV.fetch("RT_MODEL_MB", "0").to_i << 20)).freeze
OBJECTS = Array.new(ENV.fetch("RT_OBJECTS", "0").to_i) { |i| "object-#{i}" }

worker = SnakepitBridge::Worker.new

worker.command("whoami") do |_args, _ctx|
  { "pid" => Process.pid, "ppid" => Process.ppid, "loaded_in" => LOADED_IN }
end

# What serving does to the model: read every byte, and full collections.
worker.command("touch") do |_args, _ctx|
  GC.start(full_mark: true, immediate_sweep: true)
  digest = Digest::SHA256.hexdigest(MODEL)
  GC.start(full_mark: true, immediate_sweep: true)
  { "pid" => Process.pid, "digest" => digest, "objects" => OBJECTS.size }
end

worker.run
