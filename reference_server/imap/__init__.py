"""The IMAP side of the reference server (RFC 3501, RFC 9051)."""
