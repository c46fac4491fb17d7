"""The session frames, sans I/O (h11's habit): every frame survives the trip whole, one
byte at a time and with the next frame's bytes behind it; a peer's malformed bytes are
its fault (RemoteProtocolError), a frame too big to send is ours."""

from __future__ import annotations

import pytest

from loft.node import frames
from loft.node.frames import (
    MAX_PAYLOAD,
    NEED_DATA,
    Channel,
    Decoder,
    Frame,
    LocalProtocolError,
    RemoteProtocolError,
)

SAMPLES = [
    Frame(Channel.STDIN, b"echo hi\n"),
    Frame(Channel.STDOUT, bytes(range(256)) * 3),
    Frame(Channel.STDERR, b""),
    frames.resize(40, 120),
    frames.eof(),
    frames.exit_status(137),
    frames.error("workspace stopped", "start it"),
    frames.ready(listen="/run/x.sock"),
]


def _decode_all(chunks: list[bytes]) -> list[Frame]:
    d = Decoder()
    out: list[Frame] = []
    for chunk in [*chunks, b""]:
        d.receive_data(chunk)
        while (f := d.next_frame()) not in (NEED_DATA, None):
            assert isinstance(f, Frame)
            out.append(f)
    assert d.next_frame() is None
    return out


def test_frames_codec_round_trip_whole_bytewise_and_joined() -> None:
    wire = b"".join(frames.encode(f) for f in SAMPLES)
    assert _decode_all([wire]) == SAMPLES
    assert _decode_all([wire[i : i + 1] for i in range(len(wire))]) == SAMPLES
    for cut in range(1, len(wire), 7):  # every split point: a frame's tail with the next
        assert _decode_all([wire[:cut], wire[cut:]]) == SAMPLES


def test_frames_codec_json_payloads() -> None:
    assert frames.json_of(frames.resize(40, 120)) == {"rows": 40, "cols": 120}
    assert frames.json_of(frames.exit_status(3)) == {"status": 3}
    assert frames.json_of(frames.error("e", None)) == {"error": "e", "hint": None}
    assert frames.eof().payload == bytes([Channel.STDIN])
    with pytest.raises(RemoteProtocolError, match="bad JSON"):
        frames.json_of(Frame(Channel.EXIT, b"{"))
    with pytest.raises(RemoteProtocolError, match="not a JSON object"):
        frames.json_of(Frame(Channel.EXIT, b"[1]"))


def test_frames_codec_websocket_messages_carry_the_same_frames() -> None:
    for f in SAMPLES:
        assert frames.decode_message(frames.encode_message(f)) == f
    with pytest.raises(RemoteProtocolError):
        frames.decode_message(b"")


@pytest.mark.parametrize(
    ("wire", "says"),
    [
        (bytes([99]) + b"\0\0\0\0", "unknown channel 99"),
        (bytes([1]) + (MAX_PAYLOAD + 1).to_bytes(4, "big"), "over"),
        (bytes([1]) + (10).to_bytes(4, "big") + b"abc", "inside a frame"),
    ],
)
def test_frames_codec_refuses_a_peers_malformed_bytes(wire: bytes, says: str) -> None:
    d = Decoder()
    d.receive_data(wire)
    d.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=says):
        d.next_frame()


def test_frames_codec_an_oversized_frame_is_never_buffered() -> None:
    """The length is refused as soon as the header arrives, before its payload."""
    d = Decoder()
    d.receive_data(bytes([1]) + (1 << 30).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError, match="over"):
        d.next_frame()


def test_frames_codec_local_misuse_is_ours() -> None:
    with pytest.raises(LocalProtocolError):
        Frame(Channel.STDOUT, b"x" * (MAX_PAYLOAD + 1))
    d = Decoder()
    d.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        d.receive_data(b"more")
