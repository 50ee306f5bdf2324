from ptest import raises

from protocols import errors


def test_error_names_field_and_code():
    e = errors.MessageError("must be an integer, got str", field="seq")
    assert str(e) == "seq: must be an integer, got str"
    assert e.code == "bad_message"
    assert e.field == "seq"


def test_codec_errors_are_remote_errors():
    for cls in (errors.MessageError, errors.NMEAError, errors.FrameError, errors.CoAPError,
                errors.MQTTPacketError, errors.TransferError, errors.AuthError, errors.TopicError):
        assert issubclass(cls, errors.RemoteProtocolError)
        assert not issubclass(cls, errors.LocalProtocolError)


def test_raises_helper_checks_text():
    with raises(errors.FrameError, match="crc") as r:
        raise errors.FrameError("crc mismatch")
    assert r.value.code == "bad_frame"


def test_code_override():
    e = errors.AuthError("replayed counter 3 <= 7", field="ctr", code="replay")
    assert e.code == "replay"
