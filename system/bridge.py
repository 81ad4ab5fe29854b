"""Asyncio thread <-> actor bridge for services built on async clients (discord.py, twitchio).

Calling ``Actor.send`` from another thread loses messages under load, so events travel the
documented way: a ``queue.SimpleQueue`` plus a socketpair whose read end the actor watches
(``ThespianWatch``, returned by the service base after every message). The asyncio side calls
:meth:`AsyncBridge.post`; the actor drains everything that arrived, in order, on ``WatchMessage``::

    bridge = AsyncBridge()
    bridge.start(client_main)          # async def client_main(bridge): ... bridge.post(event)
    ...
    for event in bridge.drain(): ...   # in the actor
    bridge.call(coro)                  # run a coroutine on the client's loop from the actor

Logging from the client's thread must go through the actor too: inside an actor, records are
forwarded by Thespian's transport, which only the actor's own thread may use. The loop logs with
:meth:`~AsyncBridge.log`, and :meth:`~AsyncBridge.capture_logs` routes a library's loggers
(``discord``, ``twitchio``) the same way; the service base writes them from the actor thread.

A request from the client that the actor must answer (a chat command asking the admin) is an
:meth:`~AsyncBridge.ask` on the loop: the actor gets ``("ask", rid, request)`` and resolves it
with :meth:`~AsyncBridge.answer`, from its own thread, whenever the answer is there.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

LOG_EVENT = "bridge.log"


class _ToActor(logging.Handler):
    """Hands a library's log records to the actor's thread."""

    def __init__(self, bridge: AsyncBridge) -> None:
        super().__init__()
        self.bridge = bridge

    def emit(self, record: logging.LogRecord) -> None:
        self.bridge.post((LOG_EVENT, record))


def _loggers_named(name: str) -> list[logging.Logger]:
    """The logger ``name`` of every logging tree its library's loggers hang off.

    Thespian gives each actor process a new ``logging.Manager`` once it is forked (a new root
    that forwards to its logger process), so a library imported before the fork, in the parent,
    keeps module-level loggers of the parent's tree: ``logging.getLogger(name)`` would return
    a logger none of them reports to, and their records (DEBUG too: the old root lets all of
    them through) would go on to the logger process one message each."""
    managers = {id(logging.Logger.manager): logging.Logger.manager}
    for module_name, module in list(sys.modules.items()):
        if module_name == name or module_name.startswith(name + "."):
            for value in list(vars(module).values()):
                if isinstance(value, logging.Logger) and not isinstance(value, logging.RootLogger):
                    managers.setdefault(id(value.manager), value.manager)
    return [manager.getLogger(name) for manager in managers.values()]


class AsyncBridge:
    def __init__(self) -> None:
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self._asks = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def fileno(self) -> int:
        return self._rsock.fileno()

    def start(self, main: Callable[[AsyncBridge], Awaitable[Any]], name: str = "bridge") -> None:
        """Run ``main(bridge)`` on a new event loop in a daemon thread."""
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            ready.set()
            try:
                self.loop.run_until_complete(main(self))
            except BaseException as exc:  # noqa: BLE001 - reported to the actor as an event
                self.error = exc
                self.post(("bridge.error", exc))
            finally:
                with contextlib.suppress(Exception):
                    self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()
                self.post(("bridge.stopped", None))

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()
        ready.wait()

    def post(self, event: Any) -> None:
        """Thread-safe: queue an event for the actor and wake it."""
        self._events.put(event)
        with contextlib.suppress(BlockingIOError, OSError):  # a full pipe already wakes it
            self._wsock.send(b"\0")

    def drain(self) -> list:
        """In the actor: every event queued so far, oldest first."""
        with contextlib.suppress(BlockingIOError, OSError):
            while self._rsock.recv(65536):
                pass
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def log(self, level: str, event: str, msg: str, **fields: Any) -> None:
        """Thread-safe: a structured log line, written by the actor (see ``ServiceActor.log``)."""
        self.post((LOG_EVENT, (level, event, msg, fields)))

    def capture_logs(self, *names: str, level: int = logging.INFO) -> None:
        """Send the records of these loggers (and their children) through the actor; records
        below ``level`` are not even made (they would cross to the logger process to be
        dropped there)."""
        handler = _ToActor(self)
        for name in names:
            for logger in _loggers_named(name):
                logger.handlers = [handler]
                logger.setLevel(level)
                logger.propagate = False

    async def ask(self, request: Any, timeout: float) -> Any:
        """On the loop: post ``("ask", rid, request)`` to the actor and wait for its
        :meth:`answer` (TimeoutError after ``timeout`` seconds; a late answer is dropped)."""
        rid = next(self._asks)
        future = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        self.post(("ask", rid, request))
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(rid, None)

    def answer(self, rid: int, result: Any) -> None:
        """From the actor: resolve the ask ``rid`` with ``result`` (thread-safe)."""
        def resolve() -> None:
            future = self._waiting.get(rid)
            if future is not None and not future.done():
                future.set_result(result)
        loop = self.loop
        if loop is None:  # never started: nobody asked
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(resolve)

    def call(self, coro: Awaitable) -> Any:
        """From the actor: schedule a coroutine on the client's loop (returns a Future)."""
        if self.loop is None or self.loop.is_closed():
            raise RuntimeError("the bridge loop is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, timeout: float = 2.0) -> None:
        """Cancel every task on the loop and wait for the thread to end."""
        loop = self.loop
        if loop is not None and not loop.is_closed() and self.running:
            def cancel_all() -> None:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(cancel_all)
        if self._thread is not None:
            self._thread.join(timeout)
        self._rsock.close()
        self._wsock.close()
