"""gunicorn's settings for `gunicorn wsgi:app` run from the repository root (gunicorn reads this
file from the working directory): kyc/serving.py's, the ones `kyc serve` applies itself."""

from kyc.serving import (accesslog, child_exit, control_socket_disable, logger_class, on_starting,  # noqa: F401
                         post_worker_init, pre_fork)
