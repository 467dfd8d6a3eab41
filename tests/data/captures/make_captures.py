"""Make the sample captures in this directory: ``python tests/data/captures/make_captures.py``.

Needs root (or CAP_NET_RAW): the loopback interface is sniffed. Sniffing only;
nothing is sent but the harness's own connections and a UDP marker this
process sends to itself on 127.0.0.1.

Each of the three runs below is one ``mailharness run --capture NAME.pcap``
of the scenarios against a fresh reference server (a development setup on
free loopback ports, with cleartext logins allowed on the pop3 and imap
listeners so the captures hold credentials for ``pcap2yaml`` to remove).
Every run is recorded twice:

- ``NAME.pcap``: by the harness itself (conformance/replay/pcapwriter.py):
  the cleartext of each scenario connection, up to STARTTLS/STLS, in
  synthesised packets.
- ``NAME-lo.pcapng``: by the kernel: scapy sniffs ``lo`` (an AF_PACKET
  socket, ``L2ListenSocket``) from before the run starts until the server
  and the client have closed every connection, keeping the TCP packets of
  the server's ports; written with scapy's ``PcapNgWriter`` (Ethernet link
  type with zero MACs, as Linux loopback is). These hold what the harness's
  writer never shows: the TCP options, window updates and pure ACKs of a
  real stack, the TLS records after STARTTLS, the run's two reachability
  probes (connect and close, the server's greeting; the close is a RST when
  the greeting came first), and every frame twice, because an AF_PACKET
  socket on ``lo`` sees each packet leave and arrive (tcpdump hides the
  outgoing copy; scapy does not), the copies not always next to each other.

  A hand-written BPF filter on the socket keeps the rest of the machine's
  loopback traffic out of it (compiling a filter expression would need
  libpcap or tcpdump); without it scapy falls behind and the kernel drops
  packets. The script checks the kernel's drop counter and reads the file
  back (no gap, nothing cut) and makes the capture again (up to 3 times)
  if a packet was lost.

The runs:

- ``smtp``: an MX session with a refused recipient and a message with a
  dot-stuffed line; a pipelined MX transaction; a submission session that
  upgrades with STARTTLS (its EHLO, AUTH PLAIN and DATA are encrypted).
- ``pop3``: a delivery over SMTP, then POP3 with CAPA, USER/PASS, STAT,
  LIST, UIDL, RETR, TOP, DELE; then a POP3 session that upgrades with STLS.
- ``imap``: a delivery over SMTP, then IMAP with a refused LOGIN, LOGIN,
  SELECT, APPEND with a synchronising literal, FETCH of whole messages,
  UID FETCH, STORE, IDLE/DONE, SEARCH, LOGOUT; then a session that upgrades
  with STARTTLS.

So ``NAME.pcap`` holds 3 sessions and ``NAME-lo.pcapng`` 5 (the probes
first). The servers' ports differ on every run, so ``services.json`` records
which port of each capture was which service (``--service PORT=SERVICE`` for
``pcap2yaml`` and ``replay``); both files of a run have the same ports.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from scapy.arch.linux import L2ListenSocket
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Packet
from scapy.sendrecv import AsyncSniffer
from scapy.utils import PcapNgWriter

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from conformance.capture import read_streams  # noqa: E402
from reference_server.controller import ServerThread  # noqa: E402
from reference_server.devsetup import dev_config, write_target  # noqa: E402

MESSAGE = """\
From: Sender <sender@example.org>
To: Alice <alice@example.test>
Subject: capture sample {run}
Message-ID: <{run}@example.org>

Hello Alice,
.a line that starts with a dot (stuffed on the wire)
bye
"""

SMTP = f"""\
id: capture-sample.smtp.mx
protocol: smtp
service: mx
title: MX delivery with a refused recipient
steps:
  - expect: {{code: 220}}
  - send: EHLO client.example.org
    expect: {{code: 250}}
  - send: MAIL FROM:<sender@example.org>
    expect: {{code: 250}}
  - send: RCPT TO:<nobody@example.test>
    expect: {{class: 5}}
  - send: RCPT TO:<alice@example.test>
    expect: {{code: 250}}
  - send: DATA
    expect: {{code: 354}}
  - data: |
{textwrap.indent(MESSAGE, "      ")}
    expect: {{code: 250}}
  - send: NOOP
    expect: {{code: 250}}
  - send: QUIT
    expect: {{code: 221}}
---
id: capture-sample.smtp.pipelined
protocol: smtp
service: mx
title: A pipelined MX transaction
steps:
  - send: EHLO client.example.org
    expect: {{code: 250}}
  - send: MAIL FROM:<sender@example.org>
  - send: RCPT TO:<bob@example.test>
  - send: DATA
  - expect: {{code: 250}}
  - expect: {{code: 250}}
  - expect: {{code: 354}}
  - data: "Subject: pipelined\\n\\nshort\\n"
    expect: {{code: 250}}
  - send: QUIT
    expect: {{code: 221}}
---
id: capture-sample.smtp.submission
protocol: smtp
service: submission
title: Submission with STARTTLS and AUTH
steps:
  - send: EHLO client.example.org
    expect: {{code: 250}}
  - starttls: true
  - send: EHLO client.example.org
    expect: {{code: 250}}
  - auth: {{mechanism: PLAIN, account: alice}}
  - send: MAIL FROM:<alice@example.test>
    expect: {{code: 250}}
  - send: RCPT TO:<bob@example.test>
    expect: {{code: 250}}
  - send: DATA
    expect: {{code: 354}}
  - data: "Subject: submitted\\n\\nover TLS\\n"
    expect: {{code: 250}}
  - send: QUIT
    expect: {{code: 221}}
"""

DELIVERY = f"""\
  - conn: smtp
    send: EHLO client.example.org
    expect: {{code: 250}}
  - conn: smtp
    send: MAIL FROM:<sender@example.org>
    expect: {{code: 250}}
  - conn: smtp
    send: RCPT TO:<alice@example.test>
    expect: {{code: 250}}
  - conn: smtp
    send: DATA
    expect: {{code: 354}}
  - conn: smtp
    data: |
{textwrap.indent(MESSAGE, "      ")}
    expect: {{code: 250}}
  - conn: smtp
    send: QUIT
    expect: {{code: 221}}
"""

POP3 = f"""\
id: capture-sample.pop3
protocol: pop3
service: pop3
title: POP3 session after a delivery
connections:
  smtp: {{protocol: smtp, service: mx}}
steps:
{DELIVERY}
  - expect: {{status: ok}}
  - send: CAPA
    expect: {{status: ok}}
  - auth: {{mechanism: native, account: alice}}
  - send: STAT
    expect: {{status: ok}}
  - send: LIST
    expect: {{status: ok}}
  - send: UIDL
    expect: {{status: ok}}
  - send: RETR 1
    expect: {{status: ok}}
  - send: TOP 1 0
    expect: {{status: ok}}
  - send: LIST 1
    expect: {{status: ok}}
  - send: LIST 9
    expect: {{status: err}}
  - send: DELE 1
    expect: {{status: ok}}
  - send: QUIT
    expect: {{status: ok}}
---
id: capture-sample.pop3.stls
protocol: pop3
service: pop3
title: POP3 with STLS
steps:
  - send: CAPA
    expect: {{status: ok}}
  - starttls: true
  - auth: {{mechanism: native, account: alice}}
  - send: QUIT
    expect: {{status: ok}}
"""

APPENDED = "Subject: appended\r\n\r\nappended over IMAP\r\n"
APPENDED_RAW = APPENDED.replace("\r", "\\r").replace("\n", "\\n")

IMAP = f"""\
id: capture-sample.imap
protocol: imap
service: imap
title: IMAP session after a delivery
connections:
  smtp: {{protocol: smtp, service: mx}}
steps:
{DELIVERY}
  - expect: {{untagged: ['^\\* OK']}}
  - send: a1 CAPABILITY
    expect: {{tagged: OK}}
  - auth: {{mechanism: native, username: alice, password: not-the-password}}
    expect: {{tagged: NO}}
  - auth: {{mechanism: native, account: alice}}
  - send: a2 SELECT INBOX
    expect: {{tagged: OK}}
  - send: a3 APPEND INBOX {{{len(APPENDED)}}}
    expect: {{continuation: true}}
  - send_raw: '{APPENDED_RAW}\\r\\n'
    expect: {{tagged: OK}}
  - send: a4 FETCH 1:* (FLAGS BODY.PEEK[])
    expect: {{tagged: OK}}
  - send: a5 UID FETCH 1:* (UID RFC822.SIZE)
    expect: {{tagged: OK}}
  - send: a6 STORE 1 +FLAGS (\\Seen)
    expect: {{tagged: OK}}
  - send: a7 IDLE
    expect: {{continuation: true}}
  - send: DONE
    expect: {{tagged: OK}}
  - send: a8 SEARCH SEEN
    expect: {{tagged: OK}}
  - send: a9 LOGOUT
    expect: {{tagged: OK}}
---
id: capture-sample.imap.starttls
protocol: imap
service: imap
title: IMAP with STARTTLS
steps:
  - send: s1 CAPABILITY
    expect: {{tagged: OK}}
  - starttls: true
  - auth: {{mechanism: native, account: alice}}
  - send: s2 LOGOUT
    expect: {{tagged: OK}}
"""

CAPTURES = {"smtp": SMTP, "pop3": POP3, "imap": IMAP}

_FIN = 0x01
_RST = 0x04
_SO_ATTACH_FILTER = 26
_SOL_PACKET = 263
_PACKET_STATISTICS = 6


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def port_filter(ports: set[int]) -> list[tuple[int, int, int, int]]:
    """Classic BPF for Ethernet frames: unfragmented IPv4 TCP or UDP, either port in ``ports``.

    Written out by hand because compiling a filter expression needs libpcap or
    the tcpdump binary. Instructions are (code, jump if true, jump if false, k).
    """
    ld_h_abs, ld_b_abs, ld_h_ind, ldx_msh = 0x28, 0x30, 0x48, 0xB1
    jeq, jset, ret = 0x15, 0x45, 0x06
    ordered = sorted(ports)
    # jumps are labels here, offsets (instructions to skip) below
    prog: list[tuple[int, int | str, int | str, int]] = [
        (ld_h_abs, 0, 0, 12),  # ethertype
        (jeq, 0, "drop", 0x0800),
        (ld_b_abs, 0, 0, 23),  # IP protocol
        (jeq, 1, 0, 6),  # TCP
        (jeq, 0, "drop", 17),  # UDP (the marker)
        (ld_h_abs, 0, 0, 20),  # flags and fragment offset
        (jset, "drop", 0, 0x1FFF),
        (ldx_msh, 0, 0, 14),  # X = IP header length
    ]
    for offset in (14, 16):  # source port, then destination port (after Ethernet + IP)
        prog.append((ld_h_ind, 0, 0, offset))
        prog += [(jeq, "accept", 0, port) for port in ordered]
    prog[-1] = (jeq, "accept", "drop", ordered[-1])
    labels = {"accept": len(prog), "drop": len(prog) + 1}
    prog += [(ret, 0, 0, 0x40000), (ret, 0, 0, 0)]
    out = []
    for i, (code, jt, jf, k) in enumerate(prog):
        jt_ = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf_ = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out.append((code, jt_, jf_, k))
    return out


class PacketsLost(RuntimeError):
    """The sniffer missed packets: make the capture again."""


class LoopbackSniffer:
    """Packets of the server's TCP ports on ``lo``, as the kernel shows them to scapy.

    Sniffing only: scapy's listen socket (``L2ListenSocket``) cannot send. A
    BPF filter attached to the socket keeps the kernel from queueing the rest
    of the machine's loopback traffic (which would overrun the socket's
    buffer while scapy decodes it packet by packet); the packets that pass are
    checked again here. Whether the socket is really open is checked with a
    UDP datagram this process sends to itself on 127.0.0.1 (a marker, never
    stored); the same marker at the end makes sure every packet before it has
    been taken. The kernel's drop counter must stay at zero.
    """

    def __init__(self, hosts: set[str], ports: set[int]) -> None:
        if not all(isinstance(ipaddress.ip_address(h), ipaddress.IPv4Address) for h in hosts):
            raise ValueError(f"the filter is for IPv4 only: {hosts}")
        self.hosts = hosts
        self.ports = ports
        self.packets: list[Packet] = []
        # connection (its two ends, sorted) -> the ends that sent a FIN; "reset" for a RST
        self.closed: dict[tuple[str, int, str, int], set[object]] = {}
        self.lock = threading.Lock()
        self.marker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.marker.bind(("127.0.0.1", 0))
        self.marker_port = self.marker.getsockname()[1]
        self.token = b"mailharness-capture-marker " + os.urandom(8).hex().encode()
        self.seen: dict[int, threading.Event] = {}
        self.socket = L2ListenSocket(iface="lo")
        raw: socket.socket = self.socket.ins
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        insns = port_filter(ports | {self.marker_port})
        array = (_SockFilter * len(insns))(*(_SockFilter(*i) for i in insns))
        prog = _SockFprog(len(insns), ctypes.cast(array, ctypes.POINTER(_SockFilter)))
        raw.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(prog))
        self.dropped()  # reading the counters resets them
        self.sniffer = AsyncSniffer(opened_socket=self.socket, store=False, prn=self._take)

    def dropped(self) -> int:
        """Packets the kernel dropped for a full buffer since the last call."""
        raw: socket.socket = self.socket.ins
        _, drops = struct.unpack("II", raw.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8))
        return int(drops)

    def _take(self, pkt: Packet) -> None:
        if IP not in pkt:
            return
        ip = pkt[IP]
        if UDP in pkt and pkt[UDP].dport == self.marker_port:
            payload = bytes(pkt[UDP].payload)
            if payload.startswith(self.token):
                event = self.seen.get(int(payload.rsplit(b" ", 1)[1]))
                if event is not None:
                    event.set()
            return
        if TCP not in pkt:
            return
        tcp = pkt[TCP]
        src, dst = (str(ip.src), int(tcp.sport)), (str(ip.dst), int(tcp.dport))
        if not (src[0] in self.hosts and src[1] in self.ports) and not (
            dst[0] in self.hosts and dst[1] in self.ports
        ):
            return
        key = (*min(src, dst), *max(src, dst))
        pkt.sniffed_on = "lo"  # scapy names the interface after the opened socket
        with self.lock:
            self.packets.append(pkt)
            ends = self.closed.setdefault(key, set())
            if int(tcp.flags) & _FIN:
                ends.add(src)
            if int(tcp.flags) & _RST:
                ends.add("reset")

    def mark(self, number: int, timeout: float = 10.0) -> None:
        """Send marker ``number`` until the sniffer has seen it."""
        event = self.seen.setdefault(number, threading.Event())
        deadline = time.monotonic() + timeout
        while not event.wait(0.05):
            if time.monotonic() > deadline:
                raise TimeoutError("the loopback sniffer does not see its marker")
            self.marker.sendto(self.token + b" %d" % number, ("127.0.0.1", self.marker_port))

    def start(self) -> None:
        self.sniffer.start()
        self.mark(1)

    def wait_closed(self, timeout: float = 10.0) -> None:
        """Until both ends of every connection seen sent a FIN, or one a RST."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                open_ = [
                    k for k, ends in self.closed.items() if "reset" not in ends and len(ends) < 2
                ]
            if not open_:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"connections not closed: {open_}")
            time.sleep(0.05)

    def stop(self) -> list[Packet]:
        """Stop once every connection is closed; the packets, or an error if any was lost."""
        try:
            self.wait_closed()
            self.mark(2)
            drops = self.dropped()
        finally:
            self.close()
        if drops:
            raise PacketsLost(f"the kernel dropped {drops} packet(s) for the sniffer")
        return self.packets

    def close(self) -> None:
        if self.sniffer.running:
            self.sniffer.stop()
        self.socket.close()
        self.marker.close()


def capture(name: str, scenarios: str, work: Path) -> dict[str, str]:
    """Run ``scenarios`` against a fresh server, recording ``name``; port -> service.

    The run writes ``NAME.pcap`` itself (``--capture``) while ``lo`` is sniffed
    into ``NAME-lo.pcapng``.
    """
    base = work / name
    config, passwords = dev_config(base / "server")
    config = dataclasses.replace(
        config,
        limits=dataclasses.replace(config.limits, auth_failure_delay=0.1),
        pop3=dataclasses.replace(config.pop3, plaintext_auth=True),
        imap=dataclasses.replace(config.imap, plaintext_auth=True),
    )
    with ServerThread(config) as srv:
        assert srv.server is not None
        target = base / "target.yaml"
        write_target(target, config, srv.bound, passwords, srv.server.ca_file)
        scenario_file = base / "scenarios.yaml"
        scenario_file.write_text(scenarios, encoding="utf-8")
        sniffer = LoopbackSniffer(
            {host for host, _ in srv.bound.values()}, {port for _, port in srv.bound.values()}
        )
        sniffer.start()
        try:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "conformance",
                    "run",
                    "--target",
                    str(target),
                    "-j",
                    "1",
                    "--no-progress",
                    "--capture",
                    str(HERE / f"{name}.pcap"),
                    str(scenario_file),
                ],
                check=True,
                cwd=ROOT,
            )
        except BaseException:
            sniffer.close()
            raise
        packets = sniffer.stop()
        sniffed = HERE / f"{name}-lo.pcapng"
        with PcapNgWriter(str(sniffed)) as writer:
            writer.write(packets)
        streams = read_streams(sniffed)
        if any(s.flagged for s in streams):
            raise PacketsLost(f"{sniffed.name}: a stream has a gap or is cut")
        return {str(port): svc for svc, (_, port) in srv.bound.items()}


def main() -> None:
    services: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="mh-captures-") as tmp:
        for name, scenarios in CAPTURES.items():
            for attempt in range(1, 4):
                try:
                    ports = capture(name, scenarios, Path(tmp) / str(attempt))
                    break
                except PacketsLost as exc:
                    print(f"{name}: {exc}; again", file=sys.stderr)
            else:
                raise SystemExit(f"{name}: could not capture without losing packets")
            for file in (f"{name}.pcap", f"{name}-lo.pcapng"):
                services[file] = ports
                print(f"{file}: {(HERE / file).stat().st_size} bytes")
    (HERE / "services.json").write_text(json.dumps(services, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
