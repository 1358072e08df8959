"""Access to the app's :class:`Runtime` from inside a request or CLI command."""

from __future__ import annotations

from flask import Flask, current_app

from folders.runtime import Runtime

RUNTIME_KEY = "satchel.runtime"


def runtime_of(app: Flask) -> Runtime:
    runtime = app.extensions[RUNTIME_KEY]
    assert isinstance(runtime, Runtime)
    return runtime


def runtime() -> Runtime:
    """The current app's Runtime (needs an app context)."""
    return runtime_of(current_app)
