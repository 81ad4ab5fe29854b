"""system.transport: the poll selector answers Thespian's loop as selectors' own selector does."""
from __future__ import annotations

import errno
import selectors
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from system.transport import PollSelector

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def ready(sel, timeout=0.0) -> dict[int, int]:
    return {key.fd: events for key, events in sel.select(timeout)}


@pytest.mark.parametrize("make", [PollSelector, selectors.DefaultSelector])
def test_readable_and_writable_as_the_selectors_module_reports_them(make, pair):
    a, b = pair
    sel = make()
    sel.register(a.fileno(), READ)
    sel.register(b.fileno(), WRITE)
    assert ready(sel) == {b.fileno(): WRITE}  # nothing to read yet; b's buffer has room
    b.send(b"x")
    assert ready(sel) == {a.fileno(): READ, b.fileno(): WRITE}
    sel.close()
    sel = make()
    sel.register(a.fileno(), READ)
    b.close()  # a hang-up wakes a reader (and only what it registered for)
    assert ready(sel) == {a.fileno(): READ}
    sel.close()


def test_one_fd_registered_for_both_waits_for_both(pair):
    a, b = pair
    sel = PollSelector()
    sel.register(a.fileno(), READ)
    sel.register(a.fileno(), WRITE)
    assert ready(sel) == {a.fileno(): WRITE}
    b.send(b"x")
    assert ready(sel) == {a.fileno(): READ | WRITE}


def test_timeout_waits_and_none_ready_is_empty(pair):
    a, _ = pair
    sel = PollSelector()
    sel.register(a.fileno(), READ)
    t0 = time.monotonic()
    assert sel.select(0.05) == []
    assert time.monotonic() - t0 >= 0.045
    assert sel.select(0) == [] and sel.select(-1) == []


def test_bad_descriptors_raise_what_thespians_loop_catches():
    """Thespian's loop catches OSError/ValueError around register+select and looks for the
    bad fd by errno (EBADF)."""
    sel = PollSelector()
    for bad in (-1, None, object()):  # e.g. ThespianWatch([None]): Thespian drops such a watch
        with pytest.raises(ValueError):
            sel.register(bad, READ)
    s = socket.socket()
    fd = s.fileno()
    s.close()
    sel.register(fd, READ)
    with pytest.raises(OSError) as err:
        sel.select(0)
    assert err.value.errno == errno.EBADF


def test_a_plain_thespian_system_runs_on_it():
    """A multiprocTCPBase system started after install(): actors forked from it loop on the
    poll selector, and asks round-trip (in a child process: install() is process-wide)."""
    code = textwrap.dedent("""
        from thespian.actors import Actor, ActorSystem
        from system import transport
        from system.launcher import secure_bind
        from bench.common import free_port
        assert transport.install()
        secure_bind("127.0.0.1")

        class Where(Actor):
            def receiveMessage(self, message, sender):
                from thespian.system.transport import TCPTransport
                self.send(sender, (message, TCPTransport.selectors.__name__))

        asys = ActorSystem("multiprocTCPBase", {"Admin Port": free_port()},
                           transientUnique=True)
        try:
            actor = asys.createActor(Where)
            answers = {asys.ask(actor, i, 10) for i in range(200)}
            assert answers == {(i, "PollSelectors") for i in range(200)}, answers
            print("ok")
        finally:
            asys.shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]
