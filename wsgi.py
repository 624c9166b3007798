"""WSGI entry point: `gunicorn wsgi:app`."""

from kyc import create_app

app = create_app(watch_rules=True)
