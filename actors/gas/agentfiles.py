"""Reading agents' own ``status.json`` files, which agents write themselves, often
non-atomically: bounded, tolerant, and never outside ``agents.workspace_root``.

    >>> parse_status(b'{"current_task": "T1", "progress": "76%"}')
    Reading(task='T1', progress=76.0, problem=None)
    >>> parse_status(b'{"current_task": "T1", "progr').problem
    'invalid JSON (a half-written file?)'

A file that cannot be used (invalid JSON, a half-written file, progress out of range or not a
number, too large, a symlink out of the root) gives a problem and no values: the caller keeps
the last good state. A missing ``progress`` keeps the last progress of the same task;
``current_tasks`` (a list) is read as its first entry.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

MAX_BYTES = 64 * 1024
AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Reading(NamedTuple):
    task: str | None
    progress: float | None
    problem: str | None = None


def check_agent(name: object) -> str | None:
    """Why ``name`` cannot be an agent's directory name, or None."""
    if not isinstance(name, str) or not AGENT_NAME.fullmatch(name) or ".." in name:
        return f"invalid agent name {str(name)[:70]!r}: letters, digits, . _ - (at most 64)"
    return None


def _progress(value: object) -> float | None | str:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.strip().removesuffix("%").strip()
        try:
            value = float(value)
        except ValueError:
            return "progress is not a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return "progress is not a number"
    if not 0 <= value <= 100:
        return f"progress {value:g} is outside 0..100"
    return float(value)


def parse_status(data: bytes) -> Reading:
    if len(data) > MAX_BYTES:
        return Reading(None, None, f"larger than {MAX_BYTES} bytes")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Reading(None, None, "invalid JSON (a half-written file?)")
    if not isinstance(doc, dict):
        return Reading(None, None, "not a JSON object")
    task = doc.get("current_task")
    if task is None and isinstance(doc.get("current_tasks"), list) and doc["current_tasks"]:
        task = doc["current_tasks"][0]
    if task is not None and not isinstance(task, (str, int)):
        return Reading(None, None, "current_task is not a string")
    progress = _progress(doc.get("progress"))
    if isinstance(progress, str):
        return Reading(None, None, progress)
    return Reading(str(task)[:500] if task is not None else None, progress)


class StatusFiles:
    """The agents' status files under ``root``, read again only when they change."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.seen: dict[str, tuple | None] = {}

    def agents(self, names) -> list[str]:
        """The relay's agents and any other agent directory under the root."""
        found, known = list(names), set(names)  # a set: a list made this O(agents²) per poll
        try:
            found += sorted(e.name for e in os.scandir(self.root) if e.is_dir(
                follow_symlinks=False) and e.name not in known and not check_agent(e.name))
        except OSError:
            pass
        return found

    def path(self, agent: str) -> Path:
        problem = check_agent(agent)
        if problem:
            raise ValueError(problem)
        return self.root / agent / "status.json"

    def changed(self, agent: str) -> Reading | None:
        """A new reading when the file changed since the last call (None if it did not)."""
        path = self.path(agent)
        try:
            st = path.lstat()
            mark = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            mark = None
        if mark == self.seen.get(agent, ()):
            return None
        self.seen[agent] = mark
        if mark is None:
            return Reading(None, None, "no status.json (missing or deleted)")
        if path.is_symlink() or not path.resolve().is_relative_to(self.root):
            return Reading(None, None, "status.json leads outside the workspace root")
        try:
            with open(path, "rb") as handle:
                return parse_status(handle.read(MAX_BYTES + 1))
        except OSError as exc:
            return Reading(None, None, f"cannot read: {exc.strerror}")
