#!/usr/bin/env bash
# Installs the peers that benchmarks/bench_smtp_accept.py measures against:
#   - Postfix (Debian package; also ships /usr/sbin/smtp-source, the load generator)
#   - aiosmtpd (the project's `bench` extra, into .venv)
# Run as root from anywhere; installs nothing else and starts nothing.
# The system-wide Postfix instance is left unconfigured ("No configuration") and
# stopped: the benchmark runs its own private instance from a temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v smtp-source >/dev/null 2>&1 && [ ! -x /usr/sbin/smtp-source ]; then
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    echo "postfix postfix/mailname string localhost" | debconf-set-selections
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postfix
fi
# Debian's package may start the default instance; the benchmark never uses it.
if [ -x /usr/sbin/postfix ] && /usr/sbin/postfix status >/dev/null 2>&1; then
    /usr/sbin/postfix stop || true
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet -e '.[bench]'

/usr/sbin/postconf -d mail_version
.venv/bin/python -c "import aiosmtpd; print('aiosmtpd', aiosmtpd.__version__)"
