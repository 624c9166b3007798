"""A kyc app with one route slower than gunicorn's worker timeout (tests/api/test_gunicorn_errors.py)."""

import time

from kyc import create_app

app = create_app()


@app.get("/slow")
def slow():
    time.sleep(30)
    return {"status": "too late"}
