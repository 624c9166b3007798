"""gunicorn's settings for `gunicorn wsgi:app` run from the repository root (gunicorn reads this
file from the working directory). `kyc serve` applies the same settings itself."""

import os

from kyc import logs, metrics

accesslog = "-"
logger_class = logs.GunicornLogger


def on_starting(_server):
    # Multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set before gunicorn starts; empty it.
    if metrics.multiprocess():
        metrics.prepare_multiprocess_dir(os.environ[metrics.MULTIPROC_ENV])


def child_exit(_server, worker):
    metrics.worker_exited(worker.pid)
