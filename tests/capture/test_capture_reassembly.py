"""TCP reassembly: order, retransmission, overlap, gaps, cuts, resets, reuse, wraparound."""

from __future__ import annotations

import random
from pathlib import Path

from capture_build import SMTP_LINES, Conn, ether, frame, pcap_bytes, smtp_session, write_pcap
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP
from scapy.packet import Packet, Raw

from conformance.capture import Chunk, Endpoint, Gap, TcpStream, read_streams


def streams_of(tmp_path: Path, packets: list[Packet], link: str = "eth") -> list[TcpStream]:
    return read_streams(write_pcap(tmp_path / "c.pcap", packets, link))


def one(tmp_path: Path, packets: list[Packet]) -> TcpStream:
    (stream,) = streams_of(tmp_path, packets)
    return stream


def sides(stream: TcpStream) -> list[tuple[str, bytes]]:
    return [(c.direction, c.data) for c in stream.chunks]


def test_in_order_session(tmp_path: Path) -> None:
    stream = one(tmp_path, smtp_session())
    assert stream.client == Endpoint("10.0.0.1", 40000)
    assert stream.server == Endpoint("10.0.0.2", 25)
    assert sides(stream) == [
        ("server" if i % 2 == 0 else "client", x) for i, x in enumerate(SMTP_LINES)
    ]
    assert [c.frame for c in stream.chunks] == [4, 5, 6, 7, 8]
    assert [c.last_frame for c in stream.chunks] == [4, 5, 6, 7, 8]
    assert stream.chunks[0].time == 1_790_000_000.003
    assert (stream.index, stream.first_frame, stream.protocol, stream.tls) == (0, 1, "smtp", False)
    assert not stream.flagged and not stream.reset and not stream.gaps


def test_consecutive_segments_of_one_side_join_into_one_chunk(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, b"220 "), c.seg(1, b"ready\r\n"), c.seg(0, b"QUIT\r\n")]
    stream = one(tmp_path, packets + c.close())
    assert stream.chunks == [
        Chunk("server", b"220 ready\r\n", 4, stream.chunks[0].time, 5),
        Chunk("client", b"QUIT\r\n", 6, stream.chunks[1].time, 6),
    ]


def test_reordered_segments_are_put_back_in_sequence(tmp_path: Path) -> None:
    c = Conn()
    head = [*c.handshake(), c.seg(1, SMTP_LINES[0])]
    first, second = c.seg(0, b"EHLO cli"), c.seg(0, b"ent.test\r\n")
    stream = one(tmp_path, [*head, second, first, c.seg(1, b"250 ok\r\n"), *c.close()])
    assert sides(stream) == [
        ("server", SMTP_LINES[0]),
        ("client", b"EHLO client.test\r\n"),
        ("server", b"250 ok\r\n"),
    ]
    # The chunk's first byte came in frame 6, the early segment in frame 5.
    assert (stream.chunks[1].frame, stream.chunks[1].last_frame) == (6, 6)
    assert not stream.gaps


def test_segment_held_until_the_hole_fills_keeps_the_other_side_after_it(tmp_path: Path) -> None:
    """A server segment arriving before the one that fills its hole is delivered with it."""
    c = Conn()
    packets = c.handshake()
    part1, part2 = c.seg(1, b"220 a"), c.seg(1, b"bc\r\n")
    quit_ = c.seg(0, b"QUIT\r\n")
    stream = one(tmp_path, [*packets, part2, part1, quit_, *c.close()])
    assert sides(stream) == [("server", b"220 abc\r\n"), ("client", b"QUIT\r\n")]


def test_retransmissions_are_dropped(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, SMTP_LINES[0])]
    ehlo = c.seg(0, SMTP_LINES[1])
    packets += [ehlo, ehlo, packets[-1]]
    # Retransmitted with more data appended: only the new bytes count.
    quit_at = c.seq[0]
    packets += [c.seg(0, b"QUIT\r\n"), c.seg(0, b"QUIT\r\nNOOP\r\n", seq=quit_at)]
    c.seq[0] = quit_at + 12
    stream = one(tmp_path, packets + c.close())
    assert sides(stream) == [
        ("server", SMTP_LINES[0]),
        ("client", SMTP_LINES[1] + b"QUIT\r\nNOOP\r\n"),
    ]
    assert stream.chunks[1].last_frame == 9
    assert not stream.gaps


def test_overlap_keeps_the_bytes_received_first(tmp_path: Path) -> None:
    c = Conn()
    packets = c.handshake()
    base = c.seq[0]
    packets += [
        c.seg(0, b"AAAAAAAAAA", seq=base),
        c.seg(0, b"XXXXXXXXXX", seq=base + 5),  # 5 delivered bytes overlapped, 5 new
        c.seg(0, b"BBBBBBBBBB", seq=base + 20),  # held beyond a hole at 15..20
        c.seg(0, b"CCCCCCCCCC", seq=base + 15),  # fills it; overlaps the held B's
    ]
    c.seq[0] = base + 30
    stream = one(tmp_path, packets + c.close())
    assert stream.sent("client") == b"A" * 10 + b"X" * 5 + b"C" * 5 + b"B" * 10
    assert len(stream.chunks) == 1 and not stream.gaps


def test_overlap_between_held_segments_keeps_the_first_held(tmp_path: Path) -> None:
    c = Conn()
    packets = c.handshake()
    base = c.seq[0]
    packets += [
        c.seg(0, b"0123", seq=base),
        c.seg(0, b"BBBBBB", seq=base + 8),  # held: 8..14
        c.seg(0, b"CCCCCCCCCC", seq=base + 6),  # held: 6..8 and 14..16 are new
        c.seg(0, b"45", seq=base + 4),  # fills 4..6
    ]
    c.seq[0] = base + 16
    stream = one(tmp_path, packets + c.close())
    assert stream.sent("client") == b"012345" + b"CC" + b"BBBBBB" + b"CC"
    assert (stream.chunks[0].frame, stream.chunks[0].last_frame) == (4, 7)


def test_gap_at_the_end_is_reported_and_not_joined(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, SMTP_LINES[0]), c.seg(0, b"EHLO x\r\n")]
    c.seg(0, b"MAIL FROM:<a@b>\r\n")  # never captured, and never acknowledged
    packets.append(c.seg(0, b"RCPT TO:<c@d>\r\n"))
    stream = one(tmp_path, packets)
    assert sides(stream) == [
        ("server", SMTP_LINES[0]),
        ("client", b"EHLO x\r\n"),
        ("client", b"RCPT TO:<c@d>\r\n"),
    ]
    assert stream.gaps == [Gap("client", 6, len(b"MAIL FROM:<a@b>\r\n"), 2)]
    assert stream.flagged and stream.cut_at_end and not stream.cut_at_start


def test_gap_proven_by_the_peers_ack_keeps_the_dialogue_in_order(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), *c.dialogue(*SMTP_LINES[:3])]
    c.seg(0, b"MAIL FROM:<a@b>\r\n")  # missed by the capture, received by the server
    packets += [c.seg(0, b"RCPT TO:<c@d>\r\n"), c.seg(1, b"250 sender ok\r\n")]
    packets += [c.seg(1, b"250 rcpt ok\r\n"), *c.close()]
    stream = one(tmp_path, packets)
    assert sides(stream)[3:] == [
        ("client", b"RCPT TO:<c@d>\r\n"),
        ("server", b"250 sender ok\r\n250 rcpt ok\r\n"),
    ]
    assert stream.gaps == [Gap("client", 7, 17, 3)]
    assert stream.chunks[3].frame == 7


def test_gap_in_the_middle_of_one_sides_bytes_splits_the_chunk(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, b"220-first\r\n")]
    c.seg(1, b"220-lost\r\n")
    packets += [c.seg(1, b"220 last\r\n"), c.seg(0, b"QUIT\r\n"), *c.close()]
    stream = one(tmp_path, packets)
    assert sides(stream) == [
        ("server", b"220-first\r\n"),
        ("server", b"220 last\r\n"),
        ("client", b"QUIT\r\n"),
    ]
    assert stream.gaps == [Gap("server", 5, 10, 1)]


def test_fin_beyond_the_last_byte_seen_is_a_gap(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, SMTP_LINES[0])]
    c.seg(1, b"421 lost\r\n")
    packets += [c.seg(1, flags="FA"), c.seg(0, flags="FA")]
    stream = one(tmp_path, packets)
    assert stream.gaps == [Gap("server", 5, 10, 1)]
    assert not stream.cut_at_end


def test_ip_fragments_are_skipped_and_show_as_a_gap(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, SMTP_LINES[0])]
    fragmented = c.seg(0, b"EHLO " + b"x" * 60 + b"\r\n")
    pieces = list(fragmented.fragment(40))
    assert len(pieces) > 1
    packets += [*pieces, c.seg(0, b"QUIT\r\n"), *c.close()]
    stream = one(tmp_path, packets)
    assert stream.gaps == [Gap("client", 4 + len(pieces) + 1, 67, 1)]
    assert sides(stream)[1] == ("client", b"QUIT\r\n")


def test_capture_starting_mid_session(tmp_path: Path) -> None:
    packets = smtp_session()[4:]  # handshake and greeting not captured
    stream = one(tmp_path, packets)
    assert stream.cut_at_start and not stream.cut_at_end and stream.flagged
    assert stream.client == Endpoint("10.0.0.1", 40000)
    assert sides(stream)[0] == ("client", SMTP_LINES[1])
    assert stream.first_frame == 1


def test_without_syn_the_higher_port_is_the_client_on_unknown_ports(tmp_path: Path) -> None:
    c = Conn(client=("10.0.0.1", 40000), server=("10.0.0.2", 10025))
    stream = one(tmp_path, c.dialogue(*SMTP_LINES))
    assert stream.client == Endpoint("10.0.0.1", 40000)
    assert stream.server == Endpoint("10.0.0.2", 10025)
    assert sides(stream)[0] == ("server", SMTP_LINES[0])
    assert stream.protocol == "smtp"  # by the greeting


def test_without_syn_the_mail_port_is_the_server(tmp_path: Path) -> None:
    c = Conn(client=("10.0.0.1", 50000), server=("10.0.0.2", 143))
    stream = one(tmp_path, [c.seg(0, b"a1 NOOP\r\n"), c.seg(1, b"a1 OK done\r\n")])
    assert stream.server == Endpoint("10.0.0.2", 143)
    assert stream.protocol == "imap" and stream.cut_at_start and stream.cut_at_end


def test_missed_syn_with_syn_ack_seen_is_not_cut(tmp_path: Path) -> None:
    c = Conn()
    packets = smtp_session(c)[1:]
    stream = one(tmp_path, packets)
    assert not stream.cut_at_start and not stream.flagged
    assert stream.client == Endpoint("10.0.0.1", 40000)
    assert sides(stream)[1] == ("client", SMTP_LINES[1])


def test_capture_ending_mid_session(tmp_path: Path) -> None:
    stream = one(tmp_path, smtp_session()[:-3])
    assert stream.cut_at_end and not stream.cut_at_start and stream.flagged
    assert len(stream.chunks) == 5


def test_reset(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, SMTP_LINES[0]), c.seg(1, flags="R")]
    stream = one(tmp_path, packets)
    assert stream.reset and not stream.cut_at_end and not stream.flagged


def test_sequence_numbers_wrapping_past_2_to_the_32(tmp_path: Path) -> None:
    c = Conn(isn=(0xFFFFFFF0, 0xFFFFFFFE))
    packets = [*c.handshake(), c.seg(1, b"220 wrap\r\n")]
    packets += [c.seg(0, b"%02d-0123456\r\n" % i) for i in range(4)]
    late = c.seg(0, b"late\r\n")
    packets += [c.seg(0, b"last\r\n"), late, *c.close()]  # reordered across the wrap too
    stream = one(tmp_path, packets)
    assert stream.sent("client") == b"".join(b"%02d-0123456\r\n" % i for i in range(4)) + (
        b"late\r\nlast\r\n"
    )
    assert not stream.flagged


def test_new_syn_on_the_same_four_tuple_starts_a_new_stream(tmp_path: Path) -> None:
    first, second = Conn(), Conn(isn=(90000, 70000))
    syn = first.handshake()
    packets = [syn[0], *syn, *first.dialogue(*SMTP_LINES), *first.close()]  # SYN sent twice
    second_starts = len(packets) + 1
    packets += smtp_session(second)
    a, b = streams_of(tmp_path, packets)
    assert (a.index, b.index) == (0, 1)
    assert (a.first_frame, b.first_frame) == (1, second_starts)
    assert sides(a) == sides(b) and not a.flagged and not b.flagged


def test_syn_without_a_close_before_it_also_starts_a_new_stream(tmp_path: Path) -> None:
    first, second = Conn(), Conn(isn=(90000, 70000))
    packets = [*first.handshake(), *first.dialogue(*SMTP_LINES[:2]), *smtp_session(second)]
    a, b = streams_of(tmp_path, packets)
    assert a.cut_at_end and not b.flagged


def test_many_interleaved_sessions(tmp_path: Path) -> None:
    rng = random.Random(7)
    queues = []
    for n in range(40):
        conn = Conn(client=(f"10.1.0.{n + 1}", 30000 + n), isn=(n * 7919, n * 104729))
        lines = (SMTP_LINES[0], b"EHLO host%d\r\n" % n, *SMTP_LINES[2:])
        queues.append(conn.handshake() + conn.dialogue(*lines) + conn.close())
    packets: list[Packet] = []
    step = 0
    while any(queues):
        # Session n may start at step 2n; then any started session may go next.
        ready = [q for n, q in enumerate(queues) if q and 2 * n <= step]
        packets.append(rng.choice(ready).pop(0))
        step += 1
    streams = streams_of(tmp_path, packets)
    assert len(streams) == 40
    assert [s.first_frame for s in streams] == sorted(s.first_frame for s in streams)
    assert [s.index for s in streams] == list(range(40))
    assert sorted(s.client.port for s in streams) == list(range(30000, 30040))
    for stream in streams:
        n = stream.client.port - 30000
        assert stream.client == Endpoint(f"10.1.0.{n + 1}", 30000 + n)
        assert stream.sent("client") == b"EHLO host%d\r\n" % n + SMTP_LINES[3]
        assert sides(stream)[2] == ("server", SMTP_LINES[2])
        assert not stream.flagged


def test_ethernet_padding_is_not_payload(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(0, b"x"), *c.close()]
    frames = [frame(p, "eth") for p in packets]
    frames[3] += b"\x00" * 5  # the 55-byte frame padded to Ethernet's minimum of 60
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(frames))
    (stream,) = read_streams(path)
    assert stream.sent("client") == b"x"


def test_non_tcp_frames_are_skipped(tmp_path: Path) -> None:
    udp = IP(src="10.0.0.9", dst="10.0.0.8") / UDP(sport=53, dport=53) / Raw(b"dns")
    frames = [
        bytes(ether() / ARP(hwsrc="02:00:00:00:00:01", psrc="10.0.0.9", pdst="10.0.0.8")),
        frame(udp, "eth"),
        b"\x00" * 20,
    ]
    frames += [frame(p, "eth") for p in smtp_session()]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(frames))
    (stream,) = read_streams(path)
    assert stream.first_frame == 4 and len(stream.chunks) == 5


def test_truncated_by_snaplen_gives_the_captured_part_then_a_gap(tmp_path: Path) -> None:
    c = Conn()
    packets = [*c.handshake(), c.seg(1, b"220 " + b"x" * 50 + b"\r\n"), *c.close()]
    frames = [frame(p, "eth") for p in packets]
    frames[3] = frames[3][:-20]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(frames))
    (stream,) = read_streams(path)
    assert stream.sent("server") == b"220 " + b"x" * 32
    assert stream.gaps == [Gap("server", 6, 20, 1)]


def test_tcp_segment_with_options_and_a_psh_only_flag(tmp_path: Path) -> None:
    c = Conn()
    packets = c.handshake()
    seg = c.seg(1, b"220 hi\r\n", flags="P")
    seg[TCP].options = [("MSS", 1460), ("NOP", None), ("WScale", 7)]
    stream = one(tmp_path, [*packets, seg, *c.close()])
    assert stream.sent("server") == b"220 hi\r\n"


def test_syn_retransmitted_after_a_missed_first_syn_is_not_a_new_stream(tmp_path: Path) -> None:
    c = Conn()
    syn, syn_ack, ack = c.handshake()
    packets = [syn_ack, syn, ack, *c.dialogue(*SMTP_LINES), *c.close()]
    stream = one(tmp_path, packets)
    assert not stream.flagged and len(stream.chunks) == 5
