"""Where the reference server keeps mail: Maildirs for local users, a spool for outbound mail."""

from reference_server.storage.maildir import DirectorySync, MaildirStore
from reference_server.storage.spool import OutboundSpool, SpoolEntry

__all__ = ["DirectorySync", "MaildirStore", "OutboundSpool", "SpoolEntry"]
