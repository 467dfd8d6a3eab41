"""The bundled reference mail server (SMTP, POP3, IMAP, HTTP); built in later issues."""
