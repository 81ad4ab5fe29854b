"""Error classes shared by every service, and how common exceptions map onto them.

The class decides the recovery (see ``system.service``): transient errors are retried with
backoff, permanent ones are answered with an error reply, config errors park the service in
state ``failed`` without a restart loop, fatal ones crash the actor so its supervisor restarts it.
"""
from __future__ import annotations

import sqlite3


class SwarmError(Exception):
    """Base of the runtime's own errors."""

    kind = "error"


class TransientError(SwarmError):
    """Retry later: a timeout, a dropped connection, a locked database."""

    kind = "transient"


class PermanentError(SwarmError):
    """This input can never succeed: a bad message, an unknown recipient."""

    kind = "permanent"


class ConfigError(SwarmError):
    """The configuration is wrong; restarting will not help.

    ``errors`` holds every problem found, one clear line each.
    """

    kind = "config"

    def __init__(self, errors: str | list[str]):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


class FatalError(SwarmError):
    """State is broken: crash and let the supervisor restart the actor."""

    kind = "fatal"


_TRANSIENT = (TimeoutError, ConnectionError, BlockingIOError, InterruptedError)


def classify(exc: BaseException) -> str:
    """Map an exception to its recovery class: transient, permanent, config or fatal.

    >>> classify(TimeoutError())
    'transient'
    """
    if isinstance(exc, SwarmError):
        return exc.kind
    if isinstance(exc, _TRANSIENT):
        return "transient"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "transient" if ("locked" in text or "busy" in text) else "fatal"
    if isinstance(exc, (ValueError, TypeError, KeyError, UnicodeError)):
        return "permanent"
    return "fatal"
