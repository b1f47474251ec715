#!/usr/bin/env ruby
# priv/ruby/bridge.rb

# The "External Bridge Script (Ruby Example)" of the original Elixir
# Snakepit's README, as printed there, with one line added: the
# `require 'time'` it lacks (Time#iso8601 lives in the time library; without
# it the script crashes on its first request). redteam_bridges.rs runs it
# with and without that line.
require 'time' # added
require 'json'

class BridgeHandler
  def initialize
    @commands = {
      'ping' => method(:handle_ping),
      'process_data' => method(:handle_process_data),
      'generate_report' => method(:handle_generate_report)
    }
  end
  
  def run
    STDERR.puts "Ruby bridge started"
    
    loop do
      # Read 4-byte length header
      length_bytes = STDIN.read(4)
      break unless length_bytes
      
      # Unpack length (big-endian)
      length = length_bytes.unpack('N')[0]
      
      # Read JSON payload
      json_data = STDIN.read(length)
      request = JSON.parse(json_data)
      
      # Process command
      response = process_command(request)
      
      # Send response
      json_response = JSON.generate(response)
      length_header = [json_response.bytesize].pack('N')
      
      STDOUT.write(length_header)
      STDOUT.write(json_response)
      STDOUT.flush
    end
  end
  
  private
  
  def process_command(request)
    command = request['command']
    args = request['args'] || {}
    
    handler = @commands[command]
    if handler
      result = handler.call(args)
      {
        'id' => request['id'],
        'success' => true,
        'result' => result,
        'timestamp' => Time.now.iso8601
      }
    else
      {
        'id' => request['id'],
        'success' => false,
        'error' => "Unknown command: #{command}",
        'timestamp' => Time.now.iso8601
      }
    end
  rescue => e
    {
      'id' => request['id'],
      'success' => false,
      'error' => e.message,
      'timestamp' => Time.now.iso8601
    }
  end
  
  def handle_ping(args)
    { 'status' => 'ok', 'message' => 'pong' }
  end
  
  def handle_process_data(args)
    data = args['data'] || ''
    { 'processed' => data.upcase, 'length' => data.length }
  end
  
  def handle_generate_report(args)
    # Simulate report generation
    sleep(1)
    { 
      'report' => {
        'title' => args['title'] || 'Report',
        'generated_at' => Time.now.iso8601,
        'data' => args['data'] || {}
      }
    }
  end
end

# Handle signals gracefully
Signal.trap('TERM') { exit(0) }
Signal.trap('INT') { exit(0) }

# Run the bridge
BridgeHandler.new.run
