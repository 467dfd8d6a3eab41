"""The POP3 side of the reference server (RFC 1939, RFC 2449, RFC 2595, RFC 5034)."""
