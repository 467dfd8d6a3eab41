"""A tunnel for mbsync: copies standard input to a TCP connection and the connection to
standard output, until both directions have ended.

Usage: ``python tcp_relay.py IP-ADDRESS PORT``. The address must be an IP literal, so
nothing is looked up. mbsync's ``Tunnel`` runs it, and mbsync then speaks IMAP (and TLS)
over the pipes exactly as it would over its own socket; see imap_clients.py for why.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
import threading

CHUNK = 65536


def _upstream(sock: socket.socket) -> None:
    """Standard input to the socket; at end of input, half-close the connection."""
    with contextlib.suppress(OSError):
        while data := os.read(0, CHUNK):
            sock.sendall(data)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def main(host: str, port: int) -> int:
    ipaddress.ip_address(host)  # raises for a name: this relay resolves nothing
    sock = socket.create_connection((host, port), timeout=60)
    sock.settimeout(None)
    threading.Thread(target=_upstream, args=(sock,), daemon=True).start()
    try:
        while data := sock.recv(CHUNK):
            view = memoryview(data)
            while view:
                view = view[os.write(1, view) :]
    except OSError:
        return 0  # mbsync went away (EPIPE) or the connection was reset
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: tcp_relay.py IP-ADDRESS PORT")
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
