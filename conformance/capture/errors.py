"""The one error a capture file can raise: it cannot be read as a capture."""

from __future__ import annotations

import os

__all__ = ["CaptureError"]


class CaptureError(Exception):
    """A file is not a capture we can read, or is damaged.

    The message is one line naming the file and, where known, the frame number,
    so a command line tool can print it as it is.

    Attributes:
        path: the file, as given.
        frame: the 1-based frame number where reading failed, if known.
    """

    def __init__(
        self, path: str | os.PathLike[str], reason: str, *, frame: int | None = None
    ) -> None:
        self.path = os.fspath(path)
        self.frame = frame
        self.reason = reason
        where = f"{self.path}: frame {frame}" if frame is not None else self.path
        super().__init__(f"{where}: {reason}")
