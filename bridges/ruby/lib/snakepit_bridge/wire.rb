# frozen_string_literal: true

require "json"

module SnakepitBridge
  # A frame or payload the peer sent could not be turned into a message.
  # +kind+ is one of the error kinds of tests/vectors/frames.json:
  # :truncated, :too_large, :invalid_payload, :invalid_utf8, :missing_field,
  # :wrong_type.
  class DecodeError < Error
    attr_reader :kind

    def initialize(kind, message)
      super(message)
      @kind = kind
    end
  end

  # The length prefix announced more than the allowed maximum. The worker
  # keeps +size+ so it can skip the payload and stay in sync with the stream.
  class FrameTooLarge < DecodeError
    attr_reader :size

    def initialize(size, max)
      super(:too_large, "frame of #{size} bytes exceeds the maximum of #{max} bytes")
      @size = size
    end
  end

  # Raised when the msgpack codec is requested but the gem cannot be loaded.
  class CodecUnavailable < Error; end

  # A value the codec cannot write as the protocol asks: a string whose bytes
  # are not valid in its encoding (protocol strings are UTF-8). Raised before
  # anything is written, so a reply fails instead of a broken frame going out.
  class EncodeError < Error; end

  # Framing (4-byte big-endian length + payload) and the two codecs.
  module Wire
    MAX_FRAME_SIZE = 64 * 1024 * 1024
    # The largest payload a 4-byte length can announce.
    MAX_FRAME_LIMIT = 0xffff_ffff
    CODEC_NAMES = %w[json msgpack].freeze

    module_function

    # The pool's max_frame_size, from SNAKEPIT_MAX_FRAME_SIZE (decimal
    # bytes): the largest payload it reads from this worker, and the
    # largest it sends. Absent, or anything but digits making a number of
    # at least 1, means MAX_FRAME_SIZE: a worker must not fail to start
    # over it. Past MAX_FRAME_LIMIT it is MAX_FRAME_LIMIT.
    def frame_limit(env = ENV)
      raw = env["SNAKEPIT_MAX_FRAME_SIZE"]
      return MAX_FRAME_SIZE unless raw.is_a?(String) && raw.match?(/\A[0-9]+\z/)

      limit = raw.to_i
      limit.positive? ? [limit, MAX_FRAME_LIMIT].min : MAX_FRAME_SIZE
    end

    # Resolves a codec from an explicit name, else SNAKEPIT_CODEC, else json.
    def codec(name = nil)
      name = (name || ENV["SNAKEPIT_CODEC"] || "json").to_s.strip.downcase
      name = "json" if name.empty?
      case name
      when "json" then JsonCodec.new
      when "msgpack" then MsgpackCodec.new
      else raise ArgumentError, "unknown codec #{name.inspect} (expected json or msgpack)"
      end
    end

    # Reads one frame's payload. Returns nil on a clean EOF (before any byte
    # of a frame). IO#read(n) on an unbuffered IO reads straight into the
    # result and loops over short reads, so nothing past the frame is consumed.
    def read_frame(io, max_frame_size = MAX_FRAME_SIZE)
      header = io.read(4)
      return nil if header.nil?
      raise DecodeError.new(:truncated, "stream ended inside a frame header") if header.bytesize < 4

      size = header.unpack1("N")
      raise FrameTooLarge.new(size, max_frame_size) if size > max_frame_size
      return +"" if size.zero?

      payload = io.read(size)
      if payload.nil? || payload.bytesize < size
        raise DecodeError.new(:truncated, "stream ended inside a frame (#{payload&.bytesize || 0} of #{size} bytes)")
      end

      payload
    end

    # Splits a stream into frame payloads, reading up to 64 KiB at a time:
    # frames that arrive together (a request and the cancel behind it, a
    # host reply and the next request) take one read(2), not two per frame.
    class FrameReader
      CHUNK = 65_536

      attr_reader :io

      def initialize(io, max_frame_size = MAX_FRAME_SIZE)
        @io = io
        @max_frame_size = max_frame_size
        @buf = "".b
        @skip = 0 # bytes still to drop of an oversized frame
        @eof = false
        @nonblocking = nil # the second description of a pipe, or false
      end

      # A whole frame is read already: IO.select would not see it.
      def buffered?
        @skip.zero? && @buf.bytesize >= 4 && @buf.bytesize >= 4 + @buf.unpack1("N")
      end

      # Bytes were read past the last frame returned (more frames, or part
      # of one): the one test the lockstep path pays, no system call.
      def leftover?
        !@buf.empty?
      end

      # The next whole frame already read, or nil; never reads. Raises
      # FrameTooLarge as #read_frame does.
      def take_buffered
        next_frame
      end

      # Reads what the stream holds already, without waiting. True when bytes
      # (or the end of the stream) were read; the end is remembered, so the
      # next #read_frame returns at once.
      def read_waiting
        return false if @eof

        chunk = waiting_chunk
        return false if chunk == :wait_readable

        if chunk.nil?
          @eof = true
        else
          append(chunk)
        end
        true
      end

      # The next payload, or nil at the end of the stream (before a frame,
      # or while skipping an oversized one). Raises FrameTooLarge once per
      # oversized frame (the frame is then skipped as it arrives) and
      # DecodeError(:truncated) when the stream ends inside a frame.
      def read_frame
        loop do
          payload = next_frame
          return payload if payload

          chunk = read_chunk
          if chunk.nil?
            return nil if @buf.empty?

            @buf = "".b
            raise DecodeError.new(:truncated, "stream ended inside a frame")
          end
          append(chunk)
        end
      end

      private

      def append(chunk)
        chunk.force_encoding(Encoding::BINARY)
        drop = [@skip, chunk.bytesize].min
        @skip -= drop
        @buf << (drop.zero? ? chunk : chunk.byteslice(drop..))
      end

      def next_frame
        return nil if @buf.bytesize < 4

        size = @buf.unpack1("N")
        if size > @max_frame_size
          have = [@buf.bytesize - 4, size].min
          @buf = @buf.byteslice((4 + have)..)
          @skip = size - have
          raise FrameTooLarge.new(size, @max_frame_size)
        end
        return nil if @buf.bytesize < 4 + size

        payload = @buf.byteslice(4, size)
        @buf = @buf.byteslice((4 + size)..)
        payload
      end

      # From a pipe, one non-blocking read of a second description of it
      # (opened through /proc, so the reads that wait stay blocking): no
      # poll first, and nothing that releases the GVL. From anything else,
      # IO.select, then a read if it is readable.
      def waiting_chunk
        look = nonblocking
        return look.read_nonblock(CHUNK, exception: false) if look
        return :wait_readable unless IO.select([@io], nil, nil, 0)

        read_chunk
      end

      def nonblocking
        return @nonblocking unless @nonblocking.nil?

        @nonblocking = begin
          io = @io.to_io
          io.stat.pipe? && File.open("/proc/self/fd/#{io.fileno}", File::RDONLY | File::NONBLOCK | File::BINARY)
        rescue SystemCallError, IOError, NoMethodError, TypeError
          false # no /proc, or not an IO: IO.select
        end
      end

      def read_chunk
        return nil if @eof

        @io.readpartial(CHUNK)
      rescue EOFError
        @eof = true
        nil
      end
    end

    # Discards +size+ bytes, used after FrameTooLarge to resynchronise.
    def skip(io, size)
      buffer = +""
      while size.positive?
        chunk = io.read([size, 65_536].min, buffer)
        return false if chunk.nil?

        size -= chunk.bytesize
      end
      true
    end

    # +value+ (a field of a frame) quoted for an error message, at most a
    # few hundred bytes: the field can be as long as its frame, and the
    # ProtocolError that quotes it must stay a small frame.
    def shown(value)
      return value.inspect[0, 200] unless value.is_a?(String)
      return value.inspect if value.bytesize <= 100

      "#{value.byteslice(0, 100).inspect}... (#{value.bytesize} bytes)"
    end

    # +value+ with every string in a dummy encoding (UTF-16 or UTF-32, which
    # start with a byte order mark) transcoded to UTF-8, String keys too, as
    # String#encode does it: the mark goes. Anything else is kept as it is.
    # Only called on a value the generator could write, so its values are
    # no deeper than MAX_DEPTH and have no cycle. Its keys may have both:
    # the generator writes a key that is not a String as its #to_s text
    # (an Array that holds itself gives "[[...]]"), so such a key is kept
    # as it is, not walked, and is written as before.
    def without_byte_order_marks(value)
      case value
      when String
        value.encoding.dummy? ? value.encode(Encoding::UTF_8) : value
      when Hash
        value.each_with_object({}) do |(k, v), out|
          out[k.is_a?(String) ? without_byte_order_marks(k) : k] = without_byte_order_marks(v)
        end
      when Array then value.map { |v| without_byte_order_marks(v) }
      else value
      end
    rescue EncodingError
      value # the generator reports what it cannot write
    end

    # Header and payload in one string so the frame goes out in one write(2).
    def frame(payload)
      [payload.bytesize, payload].pack("Na*")
    end

    # Checks the fields a decoded message must have, by direction
    # (:to_worker or :to_pool). Raises DecodeError(:missing_field/:wrong_type).
    def validate(message, direction)
      raise DecodeError.new(:wrong_type, "payload is not a map") unless message.is_a?(Hash)

      type = message["type"]
      if direction.to_sym == :to_pool
        validate_to_pool(message, type)
      else
        validate_to_worker(message, type)
      end
      message
    end

    def validate_to_pool(message, type)
      case type
      when nil, "response"
        require_field(message, "id", Integer)
        require_field(message, "success", true, false)
        if message["success"]
          require_key(message, "result")
        else
          require_field(message, "error", String, Hash)
        end
      when "hello" then require_field(message, "protocol", Integer)
      when "chunk"
        require_field(message, "id", Integer)
        require_key(message, "data")
      when "host_call"
        require_field(message, "id", Integer)
        require_field(message, "request_id", Integer)
        require_field(message, "function", String)
        require_field(message, "args", Hash)
      else raise DecodeError.new(:wrong_type, "unknown frame type #{shown(type)}")
      end
    end

    def validate_to_worker(message, type)
      case type
      when nil, "request"
        require_field(message, "id", Integer)
        require_field(message, "command", String)
        require_field(message, "args", Hash)
      when "cancel" then require_field(message, "id", Integer)
      when "host_reply"
        require_field(message, "id", Integer)
        require_field(message, "success", true, false)
      else raise DecodeError.new(:wrong_type, "unknown frame type #{shown(type)}")
      end
    end

    def require_key(message, key)
      raise DecodeError.new(:missing_field, "missing field #{key}") unless message.key?(key)
    end

    def require_field(message, key, *allowed)
      require_key(message, key)
      value = message[key]
      return if allowed.any? { |kind| kind === value } # rubocop:disable Style/CaseEquality

      raise DecodeError.new(:wrong_type, "field #{key} has the wrong type (#{value.class})")
    end

    # JSON through the standard library: compact output, non-ASCII kept as
    # UTF-8, key order as the Hash was built.
    # The nesting limit the host keeps (snakepit_protocol::MAX_DEPTH): arrays
    # and maps, the frame's own map included. Ruby's JSON stops at 100 by
    # default, which would refuse what the host sends.
    MAX_DEPTH = 127

    class JsonCodec
      # The escape of a UTF-16 surrogate, \uD800 to \uDFFF (paired or not).
      SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/.freeze

      def initialize
        # JSON.generate builds a fresh State per call; reusing one is 2-3x
        # faster on small replies. A State is not safe to share between
        # threads, so only the thread that made the codec reuses it.
        @state = JSON::State.new(max_nesting: MAX_DEPTH)
        @owner = Thread.current
      end

      def name
        "json"
      end

      # U+FEFF as UTF-8 text.
      BOM = "\uFEFF"

      def encode(value)
        text = generate(value)
        # The generator keeps the byte order mark of a string in UTF-16 or
        # UTF-32 (Ruby's dummy encodings, which start with one) as a
        # character, where String#encode, and so MessagePack, drops it: it
        # marks the byte order, it is no text. Only a result that holds
        # U+FEFF somewhere pays for the second pass.
        return text unless text.include?(BOM)

        generate(Wire.without_byte_order_marks(value))
      end

      private def generate(value)
        if Thread.current.equal?(@owner)
          # A failed generate (NaN, bad UTF-8) leaves the nesting depth
          # raised; without the reset, max_nesting would trip eventually.
          @state.depth = 0
          @state.generate(value)
        else
          JSON.generate(value, max_nesting: MAX_DEPTH)
        end
      end

      def decode(payload)
        payload = payload.dup if payload.frozen?
        payload.force_encoding(Encoding::UTF_8)
        # The JSON parser would accept some invalid sequences inside strings,
        # so UTF-8 is checked up front (a fast C scan).
        raise DecodeError.new(:invalid_utf8, "frame is not valid UTF-8") unless payload.valid_encoding?

        begin
          value = JSON.parse(payload, max_nesting: MAX_DEPTH)
        rescue JSON::ParserError => e
          raise DecodeError.new(:invalid_payload, "frame is not valid JSON: #{e.message[0, 200]}")
        end
        raise DecodeError.new(:wrong_type, "frame is not a JSON object") unless value.is_a?(Hash)

        # An escaped lone surrogate ("\udfff") has no UTF-8 form, and the
        # parser lets some through as strings whose bytes are not UTF-8. Such
        # escapes are rare, so the walk runs only when the text has one.
        check_strings(value) if payload.include?("\\u") && payload.match?(SURROGATE_ESCAPE)
        value
      end

      private

      def check_strings(value)
        case value
        when String
          raise DecodeError.new(:invalid_utf8, "frame holds a string that is not valid UTF-8") unless value.valid_encoding?
        when Hash then value.each { |k, v| check_strings(k); check_strings(v) }
        when Array then value.each { |v| check_strings(v) }
        end
      end
    end

    # MessagePack through the msgpack gem, loaded only when this codec is
    # chosen. The gem packs UTF-8/ASCII strings as str and ASCII-8BIT
    # (binary) strings as bin, integers in their smallest form and Floats as
    # float 64, which is what the protocol asks for.
    class MsgpackCodec
      INSTALL_HINT = "the msgpack codec needs the msgpack gem: " \
                     "apt-get install ruby-msgpack (Debian/Ubuntu) or gem install msgpack"

      def initialize
        begin
          require "msgpack"
        rescue LoadError => e
          raise CodecUnavailable, "#{INSTALL_HINT} (#{e.message})"
        end
      end

      def name
        "msgpack"
      end

      # The gem writes a UTF-8 or US-ASCII string's bytes as they are, valid
      # or not (and transcodes other encodings), so a string tagged UTF-8
      # whose bytes are not ("caf\xff" read from a file, say) would go out
      # as a str that is not UTF-8, a frame the pool refuses. Such strings,
      # values and keys, raise EncodeError instead. Binary (ASCII-8BIT)
      # strings are always valid: they go out as bin, as before. A value
      # nested deeper than MAX_DEPTH raises EncodeError too, as JSON does.
      def encode(value)
        check_encodable(value, 1)
        MessagePack.pack(value)
      end

      def decode(payload)
        begin
          # Ext values reach the handler as MessagePack::ExtensionValue and
          # are written back as the same ext.
          value = MessagePack.unpack(payload, allow_unknown_ext: true)
        rescue StandardError, NoMemoryError => e
          # EOFError for a cut payload, MalformedFormatError, ...; and
          # NoMemoryError: the gem sizes an array from its header before
          # reading any element, so a few bytes can ask for 32 GiB.
          raise DecodeError.new(:invalid_payload, "frame is not valid MessagePack: #{e.class}: #{e.message[0, 200]}")
        end
        raise DecodeError.new(:wrong_type, "frame is not a MessagePack map") unless value.is_a?(Hash)

        # A bin is not a string: a frame whose type is one is of no type
        # the worker knows, as in the other bridges (Ruby's == would take
        # "cancel".b for "cancel").
        type = value["type"]
        if type.is_a?(String) && type.encoding == Encoding::BINARY
          raise DecodeError.new(:wrong_type, "unknown frame type #{Wire.shown(type)} (a bin, not a str)")
        end
        # The gem tags str payloads as UTF-8 without checking them.
        check_utf8(value)
        value
      end

      private

      # A walk in Ruby, as #check_utf8 is on the way in: an element that is
      # an Integer or Float is passed over without a call, and
      # String#valid_encoding? is a C scan whose answer Ruby caches on the
      # string. MessagePack.pack offers no hook on strings to do it there.
      # +depth+ counts the maps and arrays down to +value+, itself included.
      def check_encodable(value, depth)
        case value
        when Hash
          too_deep if depth > MAX_DEPTH
          value.each_pair do |k, v|
            if k.is_a?(String)
              invalid_string(k, "a map key") unless k.valid_encoding?
            elsif k.is_a?(Hash) || k.is_a?(Array)
              check_encodable(k, depth + 1)
            end
            check_encodable(v, depth + 1) unless v.is_a?(Integer) || v.is_a?(Float)
          end
        when Array
          too_deep if depth > MAX_DEPTH
          value.each { |v| check_encodable(v, depth + 1) unless v.is_a?(Integer) || v.is_a?(Float) }
        when String
          invalid_string(value, "a string") unless value.valid_encoding?
        end
      end

      def too_deep
        raise EncodeError, "value is nested deeper than #{MAX_DEPTH} levels"
      end

      def invalid_string(string, what)
        start = string.byteslice(0, 40)
        start << "..." if string.bytesize > 40
        raise EncodeError, "#{what} is not valid #{string.encoding}: #{start.inspect}"
      end

      def check_utf8(value)
        case value
        when String
          if value.encoding == Encoding::UTF_8 && !value.valid_encoding?
            raise DecodeError.new(:invalid_utf8, "frame holds a string that is not valid UTF-8")
          end
        when Hash then value.each { |k, v| check_utf8(k); check_utf8(v) }
        when Array then value.each { |v| check_utf8(v) }
        end
      end
    end
  end
end
