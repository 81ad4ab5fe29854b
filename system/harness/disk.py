"""A small file system to fill up: a tmpfs mounted as root (``mount -t tmpfs``), filled with
one file until ``ENOSPC`` and freed by deleting it. Used by tests/test_queue_disk_full.py and by
the harness' ``disk_full`` fault (system/harness/scenario.py).

Where a tmpfs cannot be mounted (not root, or the mount refused, e.g. in a container without
CAP_SYS_ADMIN) :func:`mount_tmpfs` says why instead: the caller skips with that reason.
"""
from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

SIZE = "32m"
FILLER = "filler"


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


class Disk:
    """A small file system: ``path`` where the swarm sees it, ``view()`` where the caller does
    (the same path, or ``/proc/PID/root/...`` for one mounted in another mount namespace)."""

    def __init__(self, path: Path, view: Callable[[], Path] | None = None):
        self.path = Path(path)
        self.view = view or (lambda: self.path)

    @property
    def filled(self) -> bool:
        return (self.view() / FILLER).exists()

    def fill(self) -> int:
        """Write one file until the file system is full (ENOSPC); returns its size. Other
        errors are raised."""
        fd = os.open(self.view() / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        size = 0
        try:
            for chunk in (1 << 16, 4096, 512):
                try:
                    while True:
                        size += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)
        return size

    def free(self) -> bool:
        """Delete the filler; False if there was none."""
        try:
            (self.view() / FILLER).unlink()
        except FileNotFoundError:
            return False
        return True

    def free_bytes(self) -> int:
        st = os.statvfs(self.view())
        return st.f_bavail * st.f_frsize


def mount_tmpfs(path: Path, size: str = SIZE) -> tuple[Disk | None, str]:
    """Mount a tmpfs of ``size`` at ``path`` (created if missing): (the disk, "") or (None, why
    not). Unmount it with :func:`unmount`."""
    if os.geteuid() != 0:
        return None, "mounting a tmpfs needs root"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    try:
        mounted = _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                       str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot run mount: {exc}"
    if mounted.returncode:
        said = (mounted.stderr.strip().splitlines() or [f"exit {mounted.returncode}"])[0]
        return None, f"cannot mount a tmpfs here: {said}"
    return Disk(path), ""


def unmount(path: Path) -> bool:
    """Unmount ``path`` (lazily if it is busy); True if nothing is left mounted there."""
    if not _run("umount", str(path)).returncode:
        return True
    return not _run("umount", "--lazy", str(path)).returncode
