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


def test_a_runtime_gone_with_batches_pending_ends_its_thread_instead_of_spinning(database_url, make_config,
                                                                                 monkeypatch):
    """A batch left in the thread's queue when its runtime went was found again at every round,
    and the thread went round without waiting: a core busy for the rest of the process (the test
    suite ran twice as long once rules watchers stopped keeping their runtimes alive)."""
    monkeypatch.setattr(Background, "IDLE", 60.0)        # it waits for work, not for its idle timeout
    rt = Runtime.start(make_config(database_url), migrate=False)
    _ask_a_rescore(rt)
    assert drain(rt, timeout=60)
    worker = rt._rescore_worker
    gone = weakref.ref(rt)
    rt.engine.dispose()
    del rt
    gc.collect()
    assert gone() is None
    with worker._changed:
        worker._batches.append(("run_left", 0))          # recorded, not run, when the runtime went
        worker._changed.notify_all()
    worker.thread.join(timeout=30)
    assert not worker.thread.is_alive()
