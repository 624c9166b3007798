"""Rescoring: accounts scored again with current rules and history, off the request path.

    requests.py    AfterCommit: what a transaction asks for once it commits (rescoring, and the
                   other after-commit work: Redis velocity marks, decision webhooks)
    background.py  the thread that rescores what committed transactions asked for
    runs.py        runs and their batches as rows: selection, summary, recovery sweeps
    batch.py       working a batch in chunks (one transaction each, cursor committed with it);
                   a run's batches worked here or enqueued on rq
    schedule.py    the schedules and a worker's maintenance round
    queue.py       rq: the connection, queues, job names and lifetimes
The rq entry points (the functions workers run) are in kyc/jobs.py.
"""
