"""WSGI entry point: `gunicorn wsgi:app`."""

from kyc import create_app, settle_for_serving

app = create_app(watch_rules=True)
settle_for_serving()
