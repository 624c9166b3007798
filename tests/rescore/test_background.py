"""The background rescoring thread lives as long as its runtime, and no longer."""

from __future__ import annotations

import gc
import threading
import weakref

from kyc.db import _Checkpointer
from kyc.rescore.background import Background, drain
from kyc.rescore.requests import after_commit
from kyc.runtime import Runtime


def _ask_a_rescore(runtime) -> None:
    with runtime.session() as session, session.begin():
        session.connection()
        after_commit(session).ask_rescore(accounts=["acct_1"])
        after_commit(session).hand_over(runtime)


def test_a_runtime_let_go_after_its_thread_worked_is_collected_and_its_threads_end(
        database_url, make_config, monkeypatch):
    """The thread once kept the runtime of its last round between rounds, so no runtime whose
    rescoring ever ran was collected: its engine, pools and threads stayed for the life of the
    process (the test suite ended with over a hundred such threads, each waking every few
    seconds, and a heap of 1.4 GB)."""
    monkeypatch.setattr(Background, "IDLE", 0.05)
    monkeypatch.setattr(_Checkpointer, "INTERVAL", 0.02)
    rt = Runtime.start(make_config(database_url), migrate=False)
    _ask_a_rescore(rt)
    assert drain(rt, timeout=60)
    threads = [rt._rescore_worker.thread] + [t for t in threading.enumerate()
                                              if isinstance(t, _Checkpointer) and t.engine() is rt.engine]
    gone = weakref.ref(rt)
    rt.engine.dispose()
    del rt
    gc.collect()                                  # a runtime sits in reference cycles
    assert gone() is None
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), thread.name
