"""Admin client: how the CLI and tests talk to the running swarm's admin actor.

    client = AdminClient(config)          # NotRunning if no swarm answers on the port
    status = client.call(protocol.ADMIN_STATUS)

The client finds the admin through the root supervisor (globalName ``swarm``, which lives as
long as the system) and then talks to it directly over this process' endpoint for the swarm
(``launcher.connect``; use clients from one thread at a time). Each call correlates the reply
by message id (stray replies are skipped), re-resolves the admin if it moved (restarted),
and raises :class:`AdminError` (one clear line) on an error reply or a timeout; it never hangs.
"""
from __future__ import annotations

import getpass
import time

from system import protocol
from system.launcher import ROOT_CLASS, ROOT_NAME, connect, read_pid_file

ATTEMPT_TIMEOUT_S = 3.0
_RETRYABLE = {"not_ready", "moved", "slow"}


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return "unknown"


class AdminError(Exception):
    """The swarm answered with an error (``code``) or did not answer in time."""

    def __init__(self, code: str, detail: str):
        self.code, self.detail = code, detail
        super().__init__(f"{detail} ({code})")


class AdminClient:
    def __init__(self, config: dict, timeout: float = 15.0):
        self.config = config
        self.asys = connect(config)
        self.timeout = timeout
        self._admin = None
        self._late: dict[str, protocol.Envelope] = {}  # replies that came during another ask
        self.principal = f"cli:{_user()}"

    def call(self, mtype: protocol.MessageType, body: dict | None = None,
             timeout: float | None = None) -> dict:
        """Send one admin request and return the reply body.

        A request is sent again only to a new admin (the old one is gone: it may have got as
        far as forwarding it, rarely) or after an answer saying it did not run
        (``not_ready``). An admin that is merely slow (a purge of many rows) is waited for,
        not asked twice: a second send, purge or restart would run again and report on the
        second run."""
        deadline = time.monotonic() + (timeout or self.timeout)
        body = {"principal": self.principal, **(body or {})}
        mid = protocol.new_id()
        data, sent_to = mtype.encode(body, id=mid), None
        try:
            while True:
                asked = False
                try:
                    if self._admin is None:
                        lid = protocol.new_id()
                        found = self._ask(self._root(), protocol.TREE_LOOKUP.encode(
                            {"name": "admin"}, id=lid), lid, protocol.TREE_LOOKUP.name,
                            deadline, waiting_for=mid)
                        if not found.get("addr"):
                            raise AdminError("not_ready", "the admin is not running yet")
                        self._admin = protocol.address_from_wire(found["addr"])
                    resend, sent_to, asked = sent_to != self._admin, self._admin, True
                    return self._ask(self._admin, data if resend else None, mid, mtype.name,
                                     deadline)
                except AdminError as exc:
                    if exc.code == "slow" and time.monotonic() > deadline:
                        raise AdminError("timeout", f"no answer to {mtype.name} within the "
                                         "timeout") from None
                    if exc.code not in _RETRYABLE or time.monotonic() > deadline:
                        raise
                    if asked and exc.code != "slow":
                        sent_to = None  # not run (not_ready, or not delivered): send again
                    self._admin = None
                    time.sleep(0.05)
        finally:
            self._late.pop(mid, None)

    def _root(self):
        # The pid file appears once boot has created the root: looking the name up earlier
        # would make Thespian create a second, rogue root that the launcher then adopts.
        if read_pid_file(self.config) is None:
            raise AdminError("not_ready", "the swarm is still starting")
        return self.asys.createActor(ROOT_CLASS, globalName=ROOT_NAME)

    def _ask(self, addr, data: bytes | None, mid: str, name: str, deadline: float,
             waiting_for: str | None = None) -> dict:
        """Send ``data`` (None: it was sent already) and wait for the reply to ``mid`` for one
        attempt; a reply to ``waiting_for`` arriving meanwhile is kept for its own call."""
        attempt_end = min(deadline, time.monotonic() + ATTEMPT_TIMEOUT_S)
        env = self._late.pop(mid, None)
        if env is None:
            wait = max(0.01, attempt_end - time.monotonic())
            reply = self.asys.ask(addr, data, wait) if data is not None else \
                self.asys.listen(wait)
            while reply is not None:
                if not isinstance(reply, (bytes, bytearray)):  # PoisonMessage: addr is gone
                    raise AdminError("moved", f"{name} was not delivered")
                got = protocol.decode(reply)
                if isinstance(got, protocol.Envelope) and got.re == mid:
                    env = got
                    break
                if isinstance(got, protocol.Envelope) and got.re == waiting_for:
                    self._late[got.re] = got
                remaining = attempt_end - time.monotonic()
                if remaining <= 0:
                    break
                reply = self.asys.listen(remaining)
        if env is not None:
            if env.t == "error":
                raise AdminError(env.b["code"], env.b["detail"])
            return env.b
        if time.monotonic() < deadline:
            raise AdminError("slow", f"no answer to {name} yet; checking the admin")
        raise AdminError("timeout", f"no answer to {name} within the timeout")
