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

import time

from system import protocol
from system.launcher import ROOT_CLASS, ROOT_NAME, connect, read_pid_file

ATTEMPT_TIMEOUT_S = 3.0
_RETRYABLE = {"not_ready", "moved"}


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

    def call(self, mtype: protocol.MessageType, body: dict | None = None,
             timeout: float | None = None) -> dict:
        """Send one admin request and return the reply body."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                if self._admin is None:
                    found = self._ask(self._root(), protocol.TREE_LOOKUP, {"name": "admin"},
                                      deadline)
                    if not found.get("addr"):
                        raise AdminError("not_ready", "the admin is not running yet")
                    self._admin = protocol.address_from_wire(found["addr"])
                return self._ask(self._admin, mtype, body, deadline)
            except AdminError as exc:
                if exc.code not in _RETRYABLE or time.monotonic() > deadline:
                    raise
                self._admin = None
                time.sleep(0.05)

    def _root(self):
        # The pid file appears once boot has created the root: looking the name up earlier
        # would make Thespian create a second, rogue root that the launcher then adopts.
        if read_pid_file(self.config) is None:
            raise AdminError("not_ready", "the swarm is still starting")
        return self.asys.createActor(ROOT_CLASS, globalName=ROOT_NAME)

    def _ask(self, addr, mtype, body, deadline: float) -> dict:
        mid = protocol.new_id()
        data = mtype.encode(body, id=mid)
        attempt_end = min(deadline, time.monotonic() + ATTEMPT_TIMEOUT_S)
        reply = self.asys.ask(addr, data, max(0.01, attempt_end - time.monotonic()))
        while reply is not None:
            if not isinstance(reply, (bytes, bytearray)):  # PoisonMessage: addr is gone
                raise AdminError("moved", f"{mtype.name} was not delivered")
            env = protocol.decode(reply)
            if isinstance(env, protocol.Envelope) and env.re == mid:
                if env.t == "error":
                    raise AdminError(env.b["code"], env.b["detail"])
                return env.b
            remaining = attempt_end - time.monotonic()
            if remaining <= 0:
                break
            reply = self.asys.listen(remaining)
        if time.monotonic() < deadline:
            raise AdminError("moved", f"no answer to {mtype.name}; retrying")
        raise AdminError("timeout", f"no answer to {mtype.name} within the timeout")
