"""The framework ceiling: a hello-world Flask route, served by the same gunicorn.conf.py as the app.

``gunicorn -c gunicorn.conf.py bench.hello:app`` keeps every server setting (gthread, workers,
threads, keep-alive, header limits) and swaps only the WSGI callable.
"""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "Hello, World!"
