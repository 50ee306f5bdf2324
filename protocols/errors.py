"""The two error families of the wire contract.

Borrowed from h11: ``LocalProtocolError`` means *we* were asked to do something the contract forbids (a bug in
the caller); ``RemoteProtocolError`` means the *peer* sent something the contract forbids (bad bytes off the wire).
Each codec subclasses the remote family so a caller can catch exactly that codec's failures, and every message
names the field, what was observed and what was expected.

Errors carry a short machine ``code`` (listed in docs/PROTOCOL.md, "Error codes") so a rejected command result
can tell the operator *why* without parsing English.
"""


class ProtocolError(Exception):
    code = "protocol"

    def __init__(self, msg, field=None, code=None):
        super().__init__(msg)
        self.msg = msg
        self.field = field
        if code is not None:
            self.code = code

    def __str__(self):
        if self.field:
            return "%s: %s" % (self.field, self.msg)
        return self.msg


class LocalProtocolError(ProtocolError):
    """The caller misused the API (e.g. tried to encode an invalid message)."""

    code = "local"


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the contract."""

    code = "remote"


class MessageError(RemoteProtocolError):
    """A JSON message (heartbeat, location, event, command, result...) is malformed or invalid."""

    code = "bad_message"


class TopicError(RemoteProtocolError):
    code = "bad_topic"


class AuthError(RemoteProtocolError):
    """Signature, counter, expiry or addressing check failed."""

    code = "auth"


class NMEAError(RemoteProtocolError):
    code = "bad_nmea"


class FrameError(RemoteProtocolError):
    code = "bad_frame"


class CoAPError(RemoteProtocolError):
    code = "bad_coap"


class MQTTPacketError(RemoteProtocolError):
    code = "bad_mqtt"


class TransferError(RemoteProtocolError):
    code = "bad_transfer"
