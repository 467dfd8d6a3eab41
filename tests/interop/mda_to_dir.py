"""A minimal MDA for fetchmail: one message from stdin into a directory, byte for byte.

Usage: ``python mda_to_dir.py DIRECTORY``. Each message goes to the next free
``000000.eml``, ``000001.eml``, ... (created exclusively, so the numbering follows the
order fetchmail delivered in). Exits non-zero if anything fails, which tells fetchmail
the delivery failed (it then keeps the message on the server).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main(directory: Path) -> None:
    data = sys.stdin.buffer.read()
    n = 0
    while True:
        try:
            fd = os.open(directory / f"{n:06d}.eml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            n += 1
            continue
        break
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: mda_to_dir.py DIRECTORY")
    main(Path(sys.argv[1]))
