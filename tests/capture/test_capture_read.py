"""Capture files: pcap and pcapng, link types, IPv4/IPv6, VLANs, and the errors."""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import pytest
from capture_build import (
    LINKTYPES,
    SMTP_LINES,
    T0,
    Conn,
    ether,
    frame,
    pcap_bytes,
    pcapng_bytes,
    smtp_session,
    write_pcap,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.utils import PcapNgWriter, wrpcap

from conformance.capture import CaptureError, Endpoint, TcpStream, read_streams

V6 = (("2001:db8::1", 40000), ("2001:db8::2", 25))


def expect_smtp(stream: TcpStream, client: Endpoint | None = None) -> None:
    assert [(c.direction, c.data) for c in stream.chunks] == [
        ("server" if i % 2 == 0 else "client", x) for i, x in enumerate(SMTP_LINES)
    ]
    assert stream.protocol == "smtp" and not stream.flagged
    if client is not None:
        assert stream.client == client


@pytest.mark.parametrize("link", sorted(set(LINKTYPES) - {"ipv6"}))
def test_link_types_ipv4(tmp_path: Path, link: str) -> None:
    (stream,) = read_streams(write_pcap(tmp_path / "c.pcap", smtp_session(), link))
    expect_smtp(stream, Endpoint("10.0.0.1", 40000))


@pytest.mark.parametrize("link", sorted(set(LINKTYPES) - {"ipv4"}))
def test_link_types_ipv6(tmp_path: Path, link: str) -> None:
    packets = smtp_session(Conn(*V6))
    (stream,) = read_streams(write_pcap(tmp_path / "c.pcap", packets, link))
    expect_smtp(stream, Endpoint("2001:db8::1", 40000))
    assert str(stream.server) == "[2001:db8::2]:25"


@pytest.mark.parametrize("family", [10, 24, 28, 30])
def test_null_loopback_ipv6_families_of_every_system(tmp_path: Path, family: int) -> None:
    frames = [struct.pack("<I", family) + bytes(p) for p in smtp_session(Conn(*V6))]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(frames, 0))
    (stream,) = read_streams(path)
    expect_smtp(stream)


def test_ipv6_extension_headers_are_walked_and_fragments_skipped(tmp_path: Path) -> None:
    c = Conn(*V6)
    packets = c.handshake()
    greeting = c.seg(1, SMTP_LINES[0])
    hbh = IPv6(src=V6[1][0], dst=V6[0][0]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    packets.append(hbh / greeting[TCP])
    frag = IPv6(src=V6[0][0], dst=V6[1][0]) / IPv6ExtHdrFragment(m=1)
    packets.append(frag / c.seg(0, b"EHLO lost\r\n")[TCP])
    packets += [c.seg(0, b"QUIT\r\n"), *c.close()]
    (stream,) = read_streams(write_pcap(tmp_path / "c.pcap", packets))
    assert stream.sent("server") == SMTP_LINES[0]
    assert stream.sent("client") == b"QUIT\r\n"
    assert [(g.direction, g.missing) for g in stream.gaps] == [("client", 11)]


@pytest.mark.parametrize("big_endian", [False, True])
def test_pcap_byte_orders(tmp_path: Path, big_endian: bool) -> None:
    path = tmp_path / "c.pcap"
    frames = [frame(p, "eth") for p in smtp_session()]
    path.write_bytes(pcap_bytes(frames, big_endian=big_endian))
    (stream,) = read_streams(path)
    expect_smtp(stream)
    assert stream.chunks[0].time == pytest.approx(T0 + 0.003)


def test_pcap_with_nanosecond_timestamps(tmp_path: Path) -> None:
    data = bytearray(pcap_bytes(frame(p, "eth") for p in smtp_session()))
    data[0:4] = struct.pack("<I", 0xA1B23C4D)
    path = tmp_path / "c.pcap"
    path.write_bytes(bytes(data))
    (stream,) = read_streams(path)
    assert stream.chunks[0].time == pytest.approx(T0 + 0.000003)


def test_a_file_written_by_scapy_wrpcap(tmp_path: Path) -> None:
    packets = [ether() / p for p in smtp_session()]
    for i, p in enumerate(packets):
        p.time = T0 + i
    path = tmp_path / "scapy.pcap"
    wrpcap(str(path), packets)
    (stream,) = read_streams(path)
    expect_smtp(stream)
    assert stream.chunks[0].time == T0 + 3


def test_a_file_written_by_scapy_pcapng_writer(tmp_path: Path) -> None:
    path = tmp_path / "scapy.pcapng"
    writer = PcapNgWriter(str(path))
    for p in smtp_session():
        writer.write(ether() / p)
    writer.close()
    (stream,) = read_streams(path)
    expect_smtp(stream)


def test_pcapng_with_two_interfaces_of_different_link_types(tmp_path: Path) -> None:
    eth, sll2 = Conn(), Conn(*V6)
    a, b = smtp_session(eth), smtp_session(sll2)
    frames = []
    for pa, pb in zip(a, b, strict=True):
        frames += [(0, frame(pa, "eth")), (1, frame(pb, "sll2"))]
    path = tmp_path / "two.pcapng"
    path.write_bytes(pcapng_bytes([1, 276], frames))
    first, second = read_streams(path)
    expect_smtp(first, Endpoint("10.0.0.1", 40000))
    expect_smtp(second, Endpoint("2001:db8::1", 40000))
    assert (first.first_frame, second.first_frame) == (1, 2)
    assert first.chunks[0].time == pytest.approx(T0 + 0.006)


def test_file_type_is_told_by_magic_not_name(tmp_path: Path) -> None:
    path = tmp_path / "actually-pcapng.pcap"
    path.write_bytes(pcapng_bytes([1], [(0, frame(p, "eth")) for p in smtp_session()]))
    expect_smtp(read_streams(path)[0])


def test_empty_capture_has_no_streams(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(pcap_bytes([]))
    assert read_streams(path) == []


# Errors --------------------------------------------------------------------


def error_for(path: Path) -> str:
    with pytest.raises(CaptureError) as info:
        read_streams(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_not_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "notes.pcap"
    path.write_text("hello, this is text\n")
    assert "not a pcap or pcapng capture file" in error_for(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    assert "empty" in error_for(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot open" in error_for(tmp_path / "nothing.pcap")


def test_gzip_compressed(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap.gz"
    path.write_bytes(gzip.compress(pcap_bytes(frame(p, "eth") for p in smtp_session())))
    assert "gunzip" in error_for(path)


def test_truncated_pcap_file_header(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes([])[:10])
    assert "truncated pcap file header (10 of 24 bytes)" in error_for(path)


def test_pcap_truncated_inside_a_frame(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(frame(p, "eth") for p in smtp_session()[:3])[:-10])
    message = error_for(path)
    assert f"{path}: frame 3: truncated" in message


def test_pcap_truncated_inside_a_record_header(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    data = pcap_bytes(frame(p, "eth") for p in smtp_session()[:3])
    path.write_bytes(data + data[24:30])
    assert f"{path}: frame 4: truncated" in error_for(path)


def test_pcapng_truncated_inside_a_block(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    data = pcapng_bytes([1], [(0, frame(p, "eth")) for p in smtp_session()])
    path.write_bytes(data[:-30])  # into the last packet block
    assert "truncated or damaged after frame" in error_for(path)


def test_pcapng_damaged_block_in_the_middle(tmp_path: Path) -> None:
    frames = [frame(p, "eth") for p in smtp_session()[:3]]
    data = bytearray(pcapng_bytes([1], [(0, f) for f in frames]))
    shb_idb = 28 + 20
    first = shb_idb + 32 + len(frames[0]) + (-len(frames[0]) % 4)
    second_end = first + 32 + len(frames[1]) + (-len(frames[1]) % 4)
    data[second_end - 4 : second_end] = b"\xff\x00\x00\x00"  # its trailing length
    path = tmp_path / "c.pcapng"
    path.write_bytes(bytes(data))
    assert f"{path}: damaged pcapng block after frame 1" in error_for(path)


def test_pcap_unsupported_link_type(tmp_path: Path) -> None:
    path = tmp_path / "wifi.pcap"
    path.write_bytes(pcap_bytes([b"\x00" * 40], 105))
    assert "unsupported link type 105" in error_for(path)


def test_pcapng_unsupported_link_type_names_the_frame(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    frames = [(0, frame(p, "eth")) for p in smtp_session()[:2]] + [(1, b"\x00" * 40)]
    path.write_bytes(pcapng_bytes([1, 147], frames))
    assert f"{path}: frame 3: unsupported link type 147" in error_for(path)


def test_frame_too_short_for_its_tcp_header_is_skipped(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, SMTP_LINES[0])]
    frames = [frame(p, "eth") for p in packets]
    frames.insert(1, frame(packets[1], "eth")[:40])
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(frames))
    (stream,) = read_streams(path)
    assert stream.sent("server") == SMTP_LINES[0]


def test_tls_on_an_implicit_tls_port_is_flagged(tmp_path: Path) -> None:
    c = Conn(server=("10.0.0.2", 465))
    hello = b"\x16\x03\x01\x00\x05" + b"\x01\x00\x00\x01\x00"
    packets = [*c.handshake(), c.seg(0, hello), c.seg(1, b"\x16\x03\x03\x00\x02ab"), *c.close()]
    (stream,) = read_streams(write_pcap(tmp_path / "c.pcap", packets))
    assert stream.protocol == "smtp" and stream.tls


# Robustness ------------------------------------------------------------------

_SESSION_FRAMES = {
    link: [frame(p, link) for p in smtp_session(Conn(*V6) if link == "ipv6" else Conn())]
    for link in LINKTYPES
}


@settings(max_examples=150, deadline=None)
@given(
    link=st.sampled_from(sorted(LINKTYPES)),
    cuts=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 120), st.integers(0, 255))),
)
def test_damaged_frames_are_skipped_or_read_never_crash(
    link: str, cuts: list[tuple[int, int, int]]
) -> None:
    """Frames truncated or with bytes changed anywhere give streams or nothing, no exception."""
    frames = list(_SESSION_FRAMES[link])
    for index, position, value in cuts:
        i = index % len(frames)
        data = bytearray(frames[i])
        if value % 3 == 0:
            del data[position % (len(data) + 1) :]
        elif data:
            data[position % len(data)] = value
        frames[i] = bytes(data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pcap"
        path.write_bytes(pcap_bytes(frames, LINKTYPES[link]))
        for stream in read_streams(path):
            assert all(chunk.data for chunk in stream.chunks)


_FILES = {
    "pcap": pcap_bytes(_SESSION_FRAMES["eth"]),
    "pcapng": pcapng_bytes([1, 276], [(i % 2, f) for i, f in enumerate(_SESSION_FRAMES["eth"])]),
}


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(_FILES)),
    changes=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
    cut=st.none() | st.integers(0, 2000),
)
def test_damaged_files_raise_capture_error_or_read(
    kind: str, changes: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(_FILES[kind])
    for position, value in changes:
        data[position % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.cap"
        path.write_bytes(bytes(data))
        try:
            read_streams(path)
        except CaptureError as exc:
            assert "\n" not in str(exc)
