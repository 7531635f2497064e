"""The command journal on a real SQLite file: the newest `remember` replies kept, across a
reopen (a restart), and a nonce seen once refused after a restart too."""

from __future__ import annotations

from pathlib import Path

from edge_agent.commands.journal import CommandJournal


def test_the_newest_replies_are_kept_across_a_restart(tmp_path: Path) -> None:
    journal = CommandJournal(tmp_path / "commands.db", remember=3)
    for i in range(10):
        journal.record(f"req-{i}", f"reply {i}".encode())
    journal.close()
    reopened = CommandJournal(tmp_path / "commands.db", remember=3)
    assert [reopened.reply_for(f"req-{i}") for i in range(6, 10)] == [
        None,
        b"reply 7",
        b"reply 8",
        b"reply 9",
    ]
    reopened.record("req-7", b"again")  # the same request id replaces its reply
    assert reopened.reply_for("req-7") == b"again"
    assert reopened.reply_for("req-8") == b"reply 8"


def test_a_nonce_is_used_once_across_a_restart(tmp_path: Path) -> None:
    journal = CommandJournal(tmp_path / "commands.db", remember=10)
    assert journal.first_use("n-1", max_age_s=60) is True
    assert journal.first_use("n-1", max_age_s=60) is False
    journal.close()
    assert CommandJournal(tmp_path / "commands.db", remember=10).first_use("n-1", 60) is False
