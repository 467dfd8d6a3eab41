"""mailharness: conformance and load testing for SMTP, POP3 and IMAP servers.

The harness lives here; the protocol cores it shares with the reference
server live in :mod:`conformance.wire`, which does no I/O at all.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
