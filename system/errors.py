"""Error classes shared by every service, and how common exceptions map onto them.

The class decides the recovery (see ``system.service``): transient errors are retried with
backoff, permanent ones are answered with an error reply, storage errors are answered with an
error reply while the service keeps running (a restart cannot free a full disk), config errors
park the service in state ``failed`` without a restart loop, fatal ones crash the actor so its
supervisor restarts it.
"""
from __future__ import annotations

import errno
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


class StorageError(SwarmError):
    """The disk refused a read or write (full, read-only, I/O error, over a size limit): the
    request was not done; it may succeed later, once an operator has fixed the disk."""

    kind = "storage"


class ConfigError(SwarmError):
    """The configuration is wrong; restarting will not help.

    ``errors`` holds every problem found, one clear line each.
    """

    kind = "config"

    def __init__(self, errors: str | list[str]):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


class NotConfigured(ConfigError):
    """A service is enabled but lacks what it needs to run (a token): it is parked in state
    ``disabled`` with the key to set, not ``failed``."""

    state = "disabled"


class FatalError(SwarmError):
    """State is broken: crash and let the supervisor restart the actor."""

    kind = "fatal"


_TRANSIENT = (TimeoutError, ConnectionError, BlockingIOError, InterruptedError)
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
_FILE_ERRNOS = frozenset({errno.EACCES, errno.EPERM})  # only with a file name: not os.kill's
# SQLite's messages for the same conditions (SQLITE_FULL, _IOERR, _READONLY, _CANTOPEN, _PERM)
_SQLITE_DISK = ("disk is full", "disk i/o error", "readonly database", "unable to open",
                "access permission denied")


def classify(exc: BaseException) -> str:
    """Map an exception to its recovery class: transient, permanent, config or fatal.

    >>> classify(TimeoutError())
    'transient'
    """
    if isinstance(exc, SwarmError):
        return exc.kind
    if isinstance(exc, _TRANSIENT):
        return "transient"
    if isinstance(exc, OSError) and (exc.errno in _DISK_ERRNOS or (
            exc.errno in _FILE_ERRNOS and exc.filename is not None)):
        return "storage"
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return "transient"
        return "storage" if any(s in text for s in _SQLITE_DISK) else "fatal"
    if isinstance(exc, (ValueError, TypeError, KeyError, UnicodeError, OverflowError)):
        return "permanent"  # bad input (OverflowError: a number too large for SQLite or msgpack)
    return "fatal"
