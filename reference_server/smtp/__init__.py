"""The reference server's SMTP service: MX, submission (587) and submissions (465)."""
