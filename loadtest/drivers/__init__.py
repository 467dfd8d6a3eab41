"""Blocking protocol drivers for load: plain sockets around the sans-IO cores.

One driver per protocol, each a thin loop around the reader of
:mod:`conformance.wire` (the same readers the conformance runner, the
fuzzer and the pcap replayer use), so a reply is parsed one way everywhere:

* :class:`SmtpDriver` (:mod:`.smtp`): connect, EHLO, STARTTLS, AUTH PLAIN/LOGIN,
  ``send_message`` (MAIL, RCPT..., DATA; pipelined when offered), ``send_messages``
  (back to back, pipelined across transactions when offered), RSET, QUIT;
* :class:`Pop3Driver` (:mod:`.pop3`): connect, CAPA, STLS, USER/PASS, AUTH
  PLAIN, STAT, LIST, UIDL, RETR, TOP, DELE, QUIT;
* :class:`ImapDriver` (:mod:`.imap`): connect, CAPABILITY, STARTTLS, LOGIN,
  SELECT/EXAMINE, SEARCH, FETCH, STORE, EXPUNGE, APPEND, NOOP, IDLE/DONE,
  LOGOUT.

Each takes an :class:`Endpoint` (``Endpoint.from_target(target, "submission")``
carries the service's host, port, TLS mode, the target's CA, verification,
``server_name`` and timeouts) and a :class:`StepRecorder`. Every protocol step
runs inside ``recorder.step(protocol, name)``: the recorder times it and sees
the exception when it fails. ``loadtest.clients`` turns that into Locust
request events (``request_type`` = protocol, ``name`` = step); outside
Locust use :class:`CallbackRecorder` or :class:`ListRecorder`. The drivers
never import locust or gevent and use no asyncio: under Locust, gevent's
monkey-patching makes their blocking sockets cooperative.

Failures are :class:`DriverError` subclasses whose ``repr`` is
``ClassName: message``, with the reply code first in the message:
:class:`SmtpReplyError` (``451 4.3.0 ...``), :class:`Pop3ReplyError`
(``-ERR [IN-USE] ...``), :class:`ImapReplyError` (``NO [TRYCREATE] ...``),
:class:`ConnectError`, :class:`TlsError`, :class:`ConnectionLost`,
:class:`DriverTimeout`, :class:`ProtocolViolation` (malformed server bytes,
with the RFC rule). A failed step closes the driver's connection; call
``start()`` (or ``connect()``) again for a new session.
"""

from ._base import (
    CallbackRecorder,
    Channel,
    ConnectError,
    ConnectionLost,
    DriverError,
    DriverTimeout,
    Endpoint,
    ListRecorder,
    NullRecorder,
    ProtocolViolation,
    ReplyError,
    StepMeta,
    StepRecorder,
    StepResult,
    TimedRecorder,
    TlsError,
)
from .imap import FetchedMessage, ImapDriver, ImapReplyError, MailboxInfo
from .pop3 import Pop3Driver, Pop3ReplyError
from .smtp import DataPayload, SmtpDriver, SmtpReplyError

__all__ = [
    "CallbackRecorder",
    "Channel",
    "ConnectError",
    "ConnectionLost",
    "DataPayload",
    "DriverError",
    "DriverTimeout",
    "Endpoint",
    "FetchedMessage",
    "ImapDriver",
    "ImapReplyError",
    "ListRecorder",
    "MailboxInfo",
    "NullRecorder",
    "Pop3Driver",
    "Pop3ReplyError",
    "ProtocolViolation",
    "ReplyError",
    "SmtpDriver",
    "SmtpReplyError",
    "StepMeta",
    "StepRecorder",
    "StepResult",
    "TimedRecorder",
    "TlsError",
]
