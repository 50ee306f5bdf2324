"""Every tunable of the wire contract, each with its source (RFC, standard, measurement).

Blocks are appended by module owners; one clearly delimited block per protocol. Values are plain ints (ms, counts,
bytes) unless stated, so the module imports nothing and runs unchanged on MicroPython.

Two files, one namespace: this one holds what a node reads from boot on (the MQTT session); the blocks of the
codecs a node loads only on demand or never (CoAP, NMEA, serial frames, clip transfer) sit in
``protocols/defaults_codecs.py``, and ``defaults.X`` / ``from protocols.defaults import X`` reach them through
the module ``__getattr__`` below (PEP 562; MicroPython has it too), which imports that file on first use. So
every name stays where callers look for it, and a speaker does not keep ~1 KB of CoAP/NMEA numbers in RAM.
"""


def __getattr__(name):
    from . import defaults_codecs

    return getattr(defaults_codecs, name)


# ---- MQTT client (MQTT 3.1.1, OASIS 2014; used by firmware/lib/lookout_node/mqtt.py) --------------------------
MQTT_PORT = 1883  # IANA / MQTT 3.1.1 §4.2: TCP port for MQTT; 8883 for MQTT over TLS
MQTT_TLS_PORT = 8883
MQTT_KEEPALIVE_S = 60  # §3.1.2.10; same 60 s as the GB/T 28181 heartbeat (3 missed). The broker drops us after
#                        1.5 x keepalive of silence, so we must send something well inside 60 s.
MQTT_PING_IDLE_FRACTION = 2  # send PINGREQ after keepalive/2 without sending anything: a lost PINGREQ/PINGRESP
#                              still leaves time to notice before the broker's 1.5x deadline (§3.1.2.10)
MQTT_PINGRESP_TIMEOUT_MS = 10000  # §3.1.2.10 "reasonable amount of time" for PINGRESP; capped at keepalive/2 by the
#                                   client so ping + wait < keepalive; past it the link is declared dead
MQTT_CONNECT_TIMEOUT_MS = 10000  # TCP connect + CONNACK; §3.1.4 "reasonable amount of time" (mqtt_as: 10 s)
MQTT_PUBACK_TIMEOUT_MS = 5000  # wait for PUBACK/SUBACK/UNSUBACK before a resend; a local-broker round trip is
#                                ~100 ms on a small board (measured), 50x margin for a congested cellular link
MQTT_PUBLISH_RETRIES = 2  # QoS 1 resends with DUP=1 (§3.3.1.1) on the same link before declaring it dead and
#                           reconnecting (mqtt_as policy); the caller's outbox owns the message after that
MQTT_SEND_TIMEOUT_MS = 10000  # a write the TCP stack cannot drain in this time means a dead link
MQTT_BACKOFF_MIN_MS = 1000  # reconnect backoff: min(max, min * 2**attempt), "equal jitter" (half fixed, half
MQTT_BACKOFF_MAX_MS = 60000  # random) after AWS Architecture Blog "Exponential Backoff And Jitter" (2015), so a
#                              township's nodes do not reconnect in lockstep after a broker restart
MQTT_MAX_PACKET_SIZE = 65536  # implementation limit (node heap): larger incoming packets are rejected unbuffered
MQTT_READ_CHUNK = 512  # bytes per socket read; keeps the reader's buffer at one packet + one chunk
MQTT_INBOX_SIZE = 16  # queued incoming messages when no callback is set; beyond it messages are counted and
#                       dropped (QoS 1 ones are left un-acknowledged so a persistent session redelivers them)
# ---- end MQTT client --------------------------------------------------------------------------------------------
