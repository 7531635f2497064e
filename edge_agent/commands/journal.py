"""Remembers the replies sent and the nonces seen, across restarts: a repeated request id
gets its first reply again without acting twice, and a replayed signed command is refused."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (request_id TEXT PRIMARY KEY, reply BLOB NOT NULL,
                                    at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS replies_at ON replies (at);
CREATE TABLE IF NOT EXISTS nonces (nonce TEXT PRIMARY KEY, at REAL NOT NULL);
"""


class CommandJournal:
    def __init__(self, path: Path, remember: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.remember = remember
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def reply_for(self, request_id: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT reply FROM replies WHERE request_id=?", (request_id,)
            ).fetchone()
        return bytes(row[0]) if row else None

    def record(self, request_id: str, reply: bytes) -> None:
        """Kept before the reply is sent; one transaction (one sync), and the oldest beyond
        `remember` found through the index on `at`, not by sorting the table."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (request_id, reply, time.time())
            )
            self._db.execute(
                "DELETE FROM replies WHERE at <"
                " (SELECT at FROM replies ORDER BY at DESC LIMIT 1 OFFSET ?)",
                (self.remember - 1,),
            )

    def first_use(self, nonce: str, max_age_s: float) -> bool:
        """True the first time a nonce is seen (within max_age_s, after which a command
        carrying it is refused for its age anyway)."""
        now = time.time()
        with self._lock:
            self._db.execute("DELETE FROM nonces WHERE at < ?", (now - 2 * max_age_s,))
            cursor = self._db.execute("INSERT OR IGNORE INTO nonces VALUES (?, ?)", (nonce, now))
            return cursor.rowcount == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()
