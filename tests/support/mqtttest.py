"""Helpers shared by the MQTT codec tests (client and server readers; both runtimes)."""

from protocols import mqttpacket as mp
from protocols.errors import MQTTPacketError


def drain(reader):
    """Every event the reader has ready, until it needs more data or the stream has closed."""
    out = []
    while True:
        ev = reader.next_event()
        if ev is mp.NEED_DATA or ev is mp.CLOSED:
            return out
        out.append(ev)


def events_in_steps(reader, data, step):
    """The events ``data`` yields when it arrives ``step`` bytes at a time (no end of stream)."""
    got = []
    for i in range(0, len(data), step):
        reader.receive_data(data[i:i + step])
        got += drain(reader)
    return got


def feed_all(reader, data, step):
    """Feed ``data`` in ``step``-byte pieces, then the end of stream, draining as it goes; the codec's own
    MQTTPacketError is the only exception allowed out of the reader (anything else propagates)."""
    try:
        for i in range(0, len(data), step):
            reader.receive_data(data[i:i + step])
            drain(reader)
        reader.receive_data(b"")
        drain(reader)
    except MQTTPacketError:
        pass
