"""Probe: a diagnostic service that exercises the runtime (echo, hang, raise, async burst).

Operators add it to check a deployment; the test suite uses it to prove supervision, hung-actor
detection, error recovery and the asyncio bridge on the real actor system::

    services:
      probe: {actor: "actors.probe:Probe"}
"""
from __future__ import annotations

import asyncio
import errno
import logging
import sys
import threading
import time

from system import protocol
from system.bridge import AsyncBridge
from system.errors import ConfigError, FatalError, PermanentError, TransientError
from system.service import ServiceActor, handles

_ERRORS = {"transient": TransientError, "permanent": PermanentError, "config": ConfigError,
           "fatal": FatalError, "value": ValueError, "runtime": RuntimeError,
           "disk_full": lambda text: OSError(errno.ENOSPC, f"No space left on device: {text}")}


class Probe(ServiceActor):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.events: list = []
        self.alerts: list = []
        self.transient_left = 0

    def on_start(self) -> None:
        options = self.service_config().get("options", {})
        if options.get("fail_start"):
            raise ConfigError(str(options["fail_start"]))
        if options.get("crash_start"):  # e.g. a storage error: OTP's init failure, restarted
            raise OSError(errno.EIO, str(options["crash_start"]))
        time.sleep(float(options.get("start_delay_s", 0)))  # a slow start, to test what races it
        if options.get("hang_start"):
            while True:  # stuck before confirming: the supervisor's start deadline ends it
                time.sleep(1)
        self.bridge = AsyncBridge()
        self.bridge.start(self._idle, name=f"{self.name}-loop")

    async def _idle(self, bridge: AsyncBridge) -> None:
        while True:
            await asyncio.sleep(3600)

    def on_event(self, event) -> None:
        if isinstance(event, tuple) and event and event[0] == "burst":
            self.events.append(event[1])

    @handles(protocol.TEST_ECHO)
    def echo(self, env, sender) -> None:
        self.reply(sender, env, protocol.OK, env.b)

    @handles(protocol.TEST_HANG)
    def hang(self, env, sender) -> None:
        while True:  # a handler stuck for good: only SIGKILL ends it
            time.sleep(1)

    @handles(protocol.TEST_RAISE)
    def raise_(self, env, sender) -> None:
        kind = env.b["kind"]
        if kind == "transient_then_ok":
            self.transient_left = self.transient_left or int(env.b.get("times", 2))
            self.transient_left -= 1
            if self.transient_left > 0:
                raise TransientError("flaky dependency")
            self.reply(sender, env, protocol.OK, {"recovered": True})
            return
        raise _ERRORS.get(kind, RuntimeError)(f"probe raised {kind}")

    @handles(protocol.TEST_BURST)
    def burst(self, env, sender) -> None:
        n = env.b["n"]

        async def push() -> None:
            for i in range(n):
                self.bridge.post(("burst", i))
        self.bridge.call(push())
        self.reply(sender, env, protocol.OK, {"scheduled": n})

    @handles(protocol.TEST_LOG)
    def log_text(self, env, sender) -> None:
        self.log("warning", "probe_log", env.b["text"], echoed=env.b["text"])
        logging.getLogger("probe.library").warning("library says %s", env.b["text"])
        self.reply(sender, env, protocol.OK, {})

    @handles(protocol.NOTIFY)
    def notice_sink(self, env, sender) -> None:
        self.alerts.append(env.b)

    @handles(protocol.TEST_WHERE)
    def where(self, env, sender) -> None:
        frame, depth = sys._getframe(), 0
        while frame is not None:
            frame, depth = frame.f_back, depth + 1
        from thespian.system.transport import TCPTransport

        self.reply(sender, env, protocol.OK, {"thread": threading.current_thread().name,
                                              "frames": depth,
                                              "selectors": TCPTransport.selectors.__name__,
                                              "registry": self.registry})

    @handles(protocol.TEST_EVENTS)
    def events_(self, env, sender) -> None:
        self.reply(sender, env, protocol.OK, {
            "count": len(self.events), "in_order": self.events == list(range(len(self.events))),
            "alerts": self.alerts})
