#!/usr/bin/env bash
# Installs the interop peers from Debian's packages: Dovecot (IMAP, POP3) and Postfix.
#
#   bash interop/install.sh
#
# Idempotent: installs only the packages that are missing (apt-get update only then).
# Uses sudo only when not root. Postfix is preseeded to "No configuration", and any
# system instance that the packages start is stopped: interop/peers.py runs private
# instances from a temporary directory and never uses /etc/postfix or /etc/dovecot.
set -euo pipefail

packages=(dovecot-core dovecot-imapd dovecot-pop3d postfix)

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)

missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "interop/install.sh: installing ${missing[*]}"
    printf '%s\n' \
        "postfix postfix/main_mailer_type select No configuration" \
        "postfix postfix/mailname string mail.example.test" \
        | "${as_root[@]}" debconf-set-selections
    "${as_root[@]}" apt-get update -qq
    # policy-rc.d 101: the packages' maintainer scripts must not start system services
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
        "${as_root[@]}" chmod 0755 "$policy"
        made_policy=1
    fi
    status=0
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || status=$?
    [ "$made_policy" -eq 0 ] || "${as_root[@]}" rm -f "$policy"
    [ "$status" -eq 0 ] || exit "$status"
fi

# Stop system instances, in case something started them anyway (ours use their own
# config directories, pid files and ports, so they would not clash, but nothing here
# should listen on the standard ports).
if [ -x /usr/sbin/postfix ] && "${as_root[@]}" /usr/sbin/postfix status >/dev/null 2>&1; then
    "${as_root[@]}" /usr/sbin/postfix stop >/dev/null 2>&1 || true
fi
if [ -x /usr/sbin/dovecot ] && [ -e /run/dovecot/master.pid ] \
    && "${as_root[@]}" /usr/sbin/dovecot stop >/dev/null 2>&1; then
    echo "interop/install.sh: stopped the system Dovecot instance"
fi

echo "dovecot $(/usr/sbin/dovecot --version)"
echo "postfix $(/usr/sbin/postconf -d -h mail_version)"
