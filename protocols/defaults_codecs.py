"""Tunables of the codecs a node loads on demand or never: CoAP, NMEA 0183, serial frames, clip transfer.

Part of ``protocols/defaults.py`` (read them as ``defaults.X``: its module ``__getattr__`` imports this file on
first use); kept apart so a node's resident heap does not hold them. Same rules: each value with its source.
"""

# ---- CoAP (RFC 7252) -------------------------------------------------------------------------------------------
# Transmission parameters, RFC 7252 §4.8 (defaults of the RFC; times in milliseconds).
COAP_ACK_TIMEOUT_MS = 2000  # §4.8 ACK_TIMEOUT 2 s: initial wait for an ACK to a CON
COAP_ACK_RANDOM_FACTOR = 1.5  # §4.8 ACK_RANDOM_FACTOR: initial timeout drawn in [ACK_TIMEOUT, ACK_TIMEOUT * 1.5]
COAP_MAX_RETRANSMIT = 4  # §4.8 MAX_RETRANSMIT: retransmissions of a CON before giving up
COAP_NSTART = 1  # §4.7 NSTART: outstanding interactions per server
COAP_DEFAULT_LEISURE_MS = 5000  # §8.2 DEFAULT_LEISURE (multicast responses)
COAP_PROBING_RATE = 1  # §4.7 PROBING_RATE, bytes/second towards an unresponsive peer
# Derived times, RFC 7252 §4.8.2 (each is the RFC's own rounded figure for the defaults above).
COAP_MAX_TRANSMIT_SPAN_MS = 45000  # ACK_TIMEOUT * (2**MAX_RETRANSMIT - 1) * ACK_RANDOM_FACTOR
COAP_MAX_TRANSMIT_WAIT_MS = 93000  # ACK_TIMEOUT * (2**(MAX_RETRANSMIT + 1) - 1) * ACK_RANDOM_FACTOR
COAP_MAX_LATENCY_MS = 100000  # §4.8.2 MAX_LATENCY, an assumed upper bound on datagram transit
COAP_PROCESSING_DELAY_MS = 2000  # §4.8.2 PROCESSING_DELAY = ACK_TIMEOUT
COAP_MAX_RTT_MS = 202000  # 2 * MAX_LATENCY + PROCESSING_DELAY
COAP_EXCHANGE_LIFETIME_MS = 247000  # MAX_TRANSMIT_SPAN + 2 * MAX_LATENCY + PROCESSING_DELAY: CON MID dedup window
COAP_NON_LIFETIME_MS = 145000  # MAX_TRANSMIT_SPAN + MAX_LATENCY: NON MID dedup window
# Sizes. §4.6: a message should fit an IP packet; 1152 bytes message / 1024 bytes payload is the RFC's upper bound.
COAP_MAX_MESSAGE_SIZE = 1152  # §4.6 recommended upper bound of a whole message when the path MTU is unknown
COAP_MAX_OPTIONS = 32  # implementation limit (node heap): a datagram with more options is rejected as unparsable
COAP_DEDUP_CAPACITY = 16  # implementation limit: server-side duplicate cache entries (a node serves few peers)
COAP_PORT = 5683  # §12.6 default UDP port for coap://
# ---- end CoAP ---------------------------------------------------------------------------------------------------

# ---- NMEA 0183 (GNSS module on a node's UART) -------------------------------------------------------------------
NMEA_MAX_LINE = 82  # NMEA 0183 (v2.x-4.x): a sentence is at most 82 characters, '$' through <CR><LF> inclusive
NMEA_MAX_BUFFER = 4096  # implementation limit: unread bytes the reader holds (4 s of a 9600-baud UART, ESP32 heap)
NMEA_CENTURY_PIVOT = 80  # RMC dates carry a 2-digit year: yy < 80 -> 20yy, else 19yy (GPS time starts 1980-01-06)
# ---- end NMEA ---------------------------------------------------------------------------------------------------

# ---- Serial frames (body-worn recorders, protocols/serialframe.py) ----------------------------------------------
SERIAL_MAX_PAYLOAD = 1024  # design choice: 1 KB blocks (little lost to stop-and-wait); ~90 ms at 115200 8N1
SERIAL_RX_CHUNK = 4096  # implementation limit: largest single read the gateway hands to FrameDecoder.receive_data
# Recorder link session (protocols/serialsession.py)
SERIAL_WINDOW = 64  # frames a receiver buffers out of order (its window, announced in HELLO); the reach of the
#                     widest ACK mask. A loss holds the window's base for about two round trips (NACK, resend,
#                     ACK): ~130 ms at 921,600 baud with 50 ms of modem latency, 23 frames of 530 bytes, and far
#                     more frames when a noisy line shortens them. 16 stalled the line 0.7 s per 300 KB at BER
#                     1e-5 and 32 still 0.1 s (measured, tests/support/serialsim.py); a small recorder may announce
#                     less, costing only its own receive direction
SERIAL_TAG_LEN = 4  # bytes of truncated HMAC-SHA256 on every session frame (LoRaWAN's MIC and BLE's MIC are 4
#                     bytes too): a forgery succeeds with p = 2**-32 per try, and each try costs a frame time
SERIAL_HELLO_MS = 1000  # handshake resend period while no answer came (a 9600-baud HELLO round trip is ~0.3 s)
SERIAL_HELLO_REFUSED_MS = 30000  # resend period after the gateway refused us (unknown device, bad key)
SERIAL_PROBE_MS = 1000  # the gateway asks a recorder to say HELLO at most this often
SERIAL_RTO_INIT_MS = 1000  # first retransmission timeout, before any round trip was measured (RFC 6298 §2.1)
SERIAL_RTO_MIN_MS = 100  # floor of the computed timeout; RFC 6298's 1 s floor is for the Internet, a serial
#                          line's round trip is a frame time plus the modem's latency (measured: 60-200 ms)
SERIAL_RTO_MAX_MS = 8000  # ceiling after doubling (RFC 6298 §5.5 allows any ceiling >= 60 s; a dock is closer)
SERIAL_MIN_PIECE = 128  # shortest clip piece the adaptive sizing picks: below it the 24-byte overhead dominates
SERIAL_LOSS_HALFLIFE_BITS = 4000000  # the loss estimate forgets with this half-life (~4 s at 921,600 baud)
SERIAL_MAX_TRIES = 10  # transmissions of one frame without an acknowledgement before the session is declared
#                        lost (with RTO doubling to 8 s that is about a minute of silence): a new handshake follows
SERIAL_MAX_QUEUE = 64  # frames queued behind the window; send() refuses more (the caller holds them)
# ---- end serial frames ------------------------------------------------------------------------------------------

# ---- Clip transfer (protocols/cliptransfer.py) ------------------------------------------------------------------
CLIP_CHUNK_SIZE_MQTT = 4096  # design choice: 4 KB chunks stay well under messages.MAX_PAYLOAD-class limits on nodes
CLIP_CHUNK_SIZE_SERIAL = 1008  # largest multiple of 16 that fits SERIAL_MAX_PAYLOAD (1024) after the 10-byte header
CLIP_MIN_CHUNK = 64  # implementation limit: bounds the chunk bitmap (chunks <= max_size / 64)
CLIP_MAX_CHUNK = 65536  # implementation limit: one chunk must fit a node's heap in one piece
CLIP_MAX_CHUNKS = 65536  # implementation limit: 8 KB received-bitmap at most
CLIP_MAX_SIZE_NODE = 2 * 1024 * 1024  # design choice: a loudspeaker node's flash budget for one audio clip
CLIP_MAX_MANIFEST = 512  # bytes of manifest JSON; also caps JSON nesting below any parser's recursion limit
CLIP_MAX_MISSING_RANGES = 32  # ranges listed in one status message (the rest follow after those arrive)
# ---- end clip transfer ------------------------------------------------------------------------------------------
