"""The two error families of the wire contract.

Borrowed from h11: ``LocalProtocolError`` means *we* were asked to do something the contract forbids (a bug in
the caller); ``RemoteProtocolError`` means the *peer* sent something the contract forbids (bad bytes off the wire).
Each codec subclasses the remote family so a caller can catch exactly that codec's failures, and every message
names the field, what was observed and what was expected.

Errors carry a short machine ``code`` (listed in docs/PROTOCOL.md, "Error codes") so a rejected command result
can tell the operator *why* without parsing English. ``str(e)`` is ``"<field>: <msg>"`` (or ``msg`` alone);
``e.msg`` and ``e.field`` keep the parts.

The per-codec subclasses differ only in ``code``, so they are made with ``type()``: on MicroPython a ``class``
statement costs a body function and more heap than the type itself, and every node imports this module.
"""


class ProtocolError(Exception):
    code = "protocol"

    def __init__(self, msg, field=None, code=None):
        super().__init__("%s: %s" % (field, msg) if field else msg)
        self.msg = msg
        self.field = field
        if code is not None:
            self.code = code


class LocalProtocolError(ProtocolError):
    """The caller misused the API (e.g. tried to encode an invalid message)."""

    code = "local"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the contract."""

    code = "remote"


def _remote(name, code):
    return type(name, (RemoteProtocolError,), {"code": code})


MessageError = _remote("MessageError", "bad_message")  # a JSON message (hb, loc, evt, cmd, res...) is invalid
TopicError = _remote("TopicError", "bad_topic")
AuthError = _remote("AuthError", "auth")  # signature, counter, expiry or addressing check failed
NMEAError = _remote("NMEAError", "bad_nmea")
FrameError = _remote("FrameError", "bad_frame")
CoAPError = _remote("CoAPError", "bad_coap")
MQTTPacketError = _remote("MQTTPacketError", "bad_mqtt")
TransferError = _remote("TransferError", "bad_transfer")
SessionError = _remote("SessionError", "bad_session")  # a serial-link HELLO or catalogue is invalid
