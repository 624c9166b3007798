"""The SQLite engine: commits never checkpoint; a background thread keeps the WAL small."""

from __future__ import annotations

import gc
import threading
import time

from sqlalchemy import text

from kyc import db


def test_sqlite_wal_is_checkpointed_off_the_request_path(tmp_path, monkeypatch):
    monkeypatch.setattr(db._Checkpointer, "INTERVAL", 0.05)
    monkeypatch.setattr(db._Checkpointer, "TRUNCATE_EVERY", 2)
    path = tmp_path / "kyc.db"
    engine = db.make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 0
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        conn.execute(text("CREATE TABLE filler (payload BLOB)"))
    for _ in range(20):
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO filler VALUES (randomblob(50000))"))
    wal = path.with_name("kyc.db-wal")
    deadline = time.monotonic() + 30
    while wal.stat().st_size > 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wal.stat().st_size == 0                      # copied into the database, then emptied
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM filler")).scalar() == 20
    engine.dispose()


def test_the_checkpoint_thread_ends_with_its_engine(tmp_path, monkeypatch):
    monkeypatch.setattr(db._Checkpointer, "INTERVAL", 0.02)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'kyc.db'}")
    thread = next(t for t in threading.enumerate()
                  if isinstance(t, db._Checkpointer) and t.engine() is engine)
    engine.dispose()
    del engine
    gc.collect()                                        # an engine sits in reference cycles
    thread.join(timeout=10)
    assert not thread.is_alive()
