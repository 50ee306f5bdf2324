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
