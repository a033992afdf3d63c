"""Durable files: what the peer store, the ledger and key files share to survive a
power loss, not only a crash."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a file created or linked in ``directory`` durable: fsyncing the file alone
    does not persist its directory entry."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
