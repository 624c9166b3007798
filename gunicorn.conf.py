"""gunicorn's settings for `gunicorn wsgi:app` run from the repository root (gunicorn reads this
file from the working directory): kyc/serving.py's, the ones `kyc serve` applies itself."""

from kyc.serving import accesslog, child_exit, logger_class, on_starting, post_worker_init, pre_fork  # noqa: F401
