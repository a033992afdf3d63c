"""The peer's durable record of the motions it has accepted (``DIR/motions.jsonl``).

One JSON object per line, appended and fsynced before the motion is logged as
received, so a peer killed at any point and restarted never reports a motion twice.
A torn last line (the crash hit mid-write) is cut off on open.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import trio

from p2p.errors import ConfigError

FILE_NAME = "motions.jsonl"


@dataclass(frozen=True, slots=True)
class StoredMotion:
    motion_id: str
    sender: str
    seq: int
    text: str
    options: tuple[str, ...]


class MotionStore:
    """Seen motion ids, optionally backed by a file. Writes go through a worker thread."""

    def __init__(self, data_dir: Path | None) -> None:
        self.ids: set[str] = set()
        self._file = None
        self._limiter = trio.CapacityLimiter(1)
        if data_dir is None:
            return
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--data {data_dir}: cannot create directory ({exc.strerror})") from None
        path = data_dir / FILE_NAME
        try:
            self._load(path)
            self._file = open(path, "ab")
        except OSError as exc:
            raise ConfigError(f"--data {data_dir}: cannot use {path} ({exc.strerror})") from None

    def _load(self, path: Path) -> None:
        if not path.exists():
            return
        good = 0
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn write at a crash: drop it
                try:
                    self.ids.add(json.loads(line)["motion_id"])
                except (ValueError, KeyError, TypeError):
                    raise ConfigError(f"{path}: corrupt record at byte {good}") from None
                good += len(line)
        if good != path.stat().st_size:
            os.truncate(path, good)

    async def add(self, motion: StoredMotion) -> bool:
        """Record ``motion``; False if it was already known. Durable when it returns."""
        if motion.motion_id in self.ids:
            return False
        self.ids.add(motion.motion_id)
        if self._file is not None:
            line = json.dumps(
                {"motion_id": motion.motion_id, "sender": motion.sender, "seq": motion.seq,
                 "text": motion.text, "options": list(motion.options)},
                ensure_ascii=False,
            ).encode() + b"\n"
            await trio.to_thread.run_sync(self._append, line, limiter=self._limiter)
        return True

    def _append(self, line: bytes) -> None:
        self._file.write(line)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
