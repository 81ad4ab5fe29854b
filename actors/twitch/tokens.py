"""Where the bot's user token lives between runs: Twitch rotates the refresh token on every
refresh, so the configured pair goes stale after the first one and the latest pair must be
kept. It is stored in one file under ``data_dir`` (mode 0600, written atomically), never in
the working directory (twitchio's ``.tio.tokens.json`` is switched off).

The file remembers which configured pair it descends from: when the operator puts a new token
in the config, that one wins over the stored descendants of the old one.

    >>> import pathlib, tempfile
    >>> store = TokenStore(pathlib.Path(tempfile.mkdtemp()) / "t.json", "a1", "r1")
    >>> store.load()
    ('a1', 'r1')
    >>> store.save("a2", "r2"); store.load()
    ('a2', 'r2')
    >>> TokenStore(store.path, "a9", "r9").load()   # a new configured token wins
    ('a9', 'r9')

Blocking file I/O: call it from a worker thread on the client's loop.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path


class TokenStore:
    def __init__(self, path: Path, access: str, refresh: str):
        self.path = Path(path)
        self._configured = (access, refresh)
        self._origin = hashlib.sha256(f"{access}\0{refresh}".encode()).hexdigest()

    def load(self) -> tuple[str, str]:
        """The newest (access, refresh) pair of the configured token."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("origin") == self._origin and data.get("access") and data.get("refresh"):
                return data["access"], data["refresh"]
        except (OSError, ValueError, AttributeError):
            pass  # missing or unreadable: the configured pair
        return self._configured

    def save(self, access: str, refresh: str) -> None:
        """Keep a refreshed pair (replacing the file atomically; owner-only permissions)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"origin": self._origin, "access": access, "refresh": refresh}, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)  # an older file with wider permissions is not reused as is
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
