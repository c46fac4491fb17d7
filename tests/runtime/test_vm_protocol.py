"""The guest agent's frame codec, the QMP codec and the memory snapshot record, alone:
round trips fed whole and a byte at a time, size limits checked before buffering, resync
after a restore, any damaged record refused."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loft.runtime.errors import WorkspaceError
from loft.runtime.qmp import MAX_LINE, QmpCodec, QmpError
from loft.runtime.vm_cold import data_pieces
from loft.runtime.vm_image import ImageRecord, copy_sparse, decode_record, encode_record
from loft.runtime.vm_protocol import (
    HEADER,
    MAGIC,
    MAX_REPLY,
    MAX_REQUEST,
    Decoder,
    Frame,
    ProtocolError,
    Type,
    encode,
    exec_payload,
    parse_error,
    parse_u32,
)

pytestmark = pytest.mark.timeout(60)

frames = st.builds(
    Frame,
    st.sampled_from(list(Type)),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=300),
)


def _decode(data: bytes, step: int | None) -> list[Frame]:
    dec = Decoder()
    out: list[Frame] = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        dec.feed(piece)
        out += dec.frames()
    return out


@given(st.lists(frames, max_size=8), st.sampled_from([None, 1, 7]))
def test_frames_round_trip_whole_and_in_pieces(fs: list[Frame], step: int | None) -> None:
    assert _decode(b"".join(encode(f) for f in fs), step) == fs


@given(st.binary(max_size=200), frames)
def test_resync_skips_garbage_up_to_the_marker(garbage: bytes, after: Frame) -> None:
    marker = encode(Frame(Type.PONG, 0, b"nonce123"))
    dec = Decoder()
    dec.resync(marker)
    data = garbage + marker + encode(after)
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        if i < len(garbage) + len(marker) - 1:
            assert not dec.synced or marker in data[: i + 1]
    assert dec.synced
    assert dec.frames()[-1] == after


def test_a_frame_over_the_limit_is_refused_before_its_payload() -> None:
    dec = Decoder()
    dec.feed(struct.pack(">HBBII", MAGIC, Type.STDOUT, 0, 1, MAX_REPLY + 1))
    with pytest.raises(ProtocolError, match="exceeds"):
        dec.frames()


@pytest.mark.parametrize(
    "header",
    [struct.pack(">HBBII", 0x1234, 21, 0, 1, 0), struct.pack(">HBBII", MAGIC, 99, 0, 1, 0)],
)
def test_bad_magic_or_type_is_the_guests_fault(header: bytes) -> None:
    dec = Decoder()
    dec.feed(header)
    with pytest.raises(ProtocolError):
        dec.frames()


def test_the_host_never_sends_more_than_the_agent_buffers() -> None:
    assert len(encode(Frame(Type.WRITE_FILE, 1, b"x" * MAX_REQUEST))) == HEADER + MAX_REQUEST
    with pytest.raises(ValueError):
        encode(Frame(Type.WRITE_FILE, 1, b"x" * (MAX_REQUEST + 1)))


def test_exec_payload_layout() -> None:
    p = exec_payload(["sh", "-c", "x"], {"A": "1"}, "/root", 0, 0)
    assert p == struct.pack(">IIHH", 0, 0, 3, 1) + b"/root\0sh\0-c\0x\0A=1\0"
    with pytest.raises(ValueError):
        exec_payload(["a\0b"], {}, "/", 0, 0)
    with pytest.raises(ValueError):
        exec_payload([], {}, "/", 0, 0)


def test_reply_parsers_check_sizes() -> None:
    assert parse_u32(Frame(Type.EXIT, 1, b"\0\0\0\x03")) == 3
    with pytest.raises(ProtocolError):
        parse_u32(Frame(Type.EXIT, 1, b"\0"))
    assert parse_error(Frame(Type.ERROR, 1, b"\0\0\0\x02gone")) == (2, "gone")
    with pytest.raises(ProtocolError):
        parse_error(Frame(Type.ERROR, 1, b""))


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), max_size=5),
       st.sampled_from([None, 1, 5]))  # fmt: skip
def test_qmp_codec_round_trip(msgs: list[dict[str, int]], step: int | None) -> None:
    data = b"".join(json.dumps(m).encode() + b"\r\n" for m in msgs)
    codec = QmpCodec()
    out = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        codec.feed(piece)
        out += codec.messages()
    assert out == msgs


def test_qmp_codec_refuses_long_lines_and_non_objects() -> None:
    codec = QmpCodec()
    with pytest.raises(QmpError, match="longer"):
        codec.feed(b"x" * (MAX_LINE + 1))
    codec = QmpCodec()
    codec.feed(b"[1]\n")
    with pytest.raises(QmpError, match="non-object"):
        codec.messages()
    ident, data = codec.command("stop")
    assert json.loads(data) == {"execute": "stop", "id": ident} and data.endswith(b"\n")


records = st.builds(
    ImageRecord,
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    st.integers(1, 1 << 22),
    st.text("0123456789abcdef", min_size=32, max_size=32),
    st.text("0123456789abcdef", min_size=64, max_size=64),
)


@given(records, st.data())
def test_image_record_round_trips_and_any_flipped_bit_is_refused(
    rec: ImageRecord, data: st.DataObject
) -> None:
    raw = encode_record(rec)
    assert decode_record(raw) == rec
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(raw)
    bad[i] ^= 1 << bit
    with pytest.raises(WorkspaceError):
        decode_record(bytes(bad))
    with pytest.raises(WorkspaceError):
        decode_record(raw[: data.draw(st.integers(0, len(raw) - 1))])


def test_image_record_refuses_ids_that_could_escape_the_images_dir() -> None:
    with pytest.raises(ValueError):
        ImageRecord("../" + "0" * 29, "ws", 256, "0" * 32, "0" * 64)


def test_sparse_ram_file_pieces_and_copy(tmp_path: Path) -> None:
    """A RAM file's data ranges: each 1 MiB piece holding anything but zeros comes once
    (two pages in one piece, with a hole between, do not read it twice), a piece of
    written zeros and the holes not at all, and a sparse copy is the same bytes."""
    ram = tmp_path / "ram"
    pages = {0: b"a", 4096 * 3: b"b", 4096 * 200: b"c", (5 << 20) + 8192: b"\0", 7 << 20: b"d"}
    with open(ram, "wb") as f:
        f.truncate(8 << 20)
        for offset, byte in pages.items():
            f.seek(offset)
            f.write(byte * 4096)
    got = list(data_pieces(ram, 1 << 20))
    data = ram.read_bytes()
    assert [o for o, _ in got] == [0, 7 << 20]
    assert all(piece == data[o : o + (1 << 20)] for o, piece in got)
    copy_sparse(ram, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data
    assert os.stat(tmp_path / "copy").st_blocks < os.stat(tmp_path / "copy").st_size // 512 // 8
