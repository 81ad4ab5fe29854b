"""QueueConsumer: a mixin for services that receive queue messages by push subscription.

    class Relay(QueueConsumer, ServiceActor):
        tick_s = 1.0

        def on_start(self):
            self.queue_subscribe(recipient="discord", max_in_flight=50)

        def on_tick(self):
            self.queue_keepalive()

        def on_queue_messages(self, messages):
            for m in messages:
                ...  # m: id, recipient, sender, type, priority, payload (msgpack bytes), ...
            self.queue_ack([m["id"] for m in messages])

Subscriptions live in the queue's memory only; ``queue_keepalive()`` (call it from
``on_tick``) finds the queue through the registry and subscribes again every
``queue_resubscribe_s`` (subscribing is idempotent), or a third of the subscription's
``ttl_s`` if that is shorter (the queue drops subscriptions not renewed within it), so a
restarted queue gets its subscribers back within that period. Deliveries can arrive before
the subscribe reply.
"""
from __future__ import annotations

import time

from system import protocol
from system.service import handles


class QueueConsumer:
    queue_resubscribe_s = 5.0

    def queue_subscribe(self, recipient: str | None = None, topic: str | None = None,
                        max_in_flight: int = 100, **options) -> None:
        """Subscribe (again) to ``recipient`` or ``topic``; options: batch, visibility_s."""
        self._queue_spec = {k: v for k, v in {"recipient": recipient, "topic": topic,
                                              "max_in_flight": max_in_flight,
                                              "consumer": getattr(self, "name", None),
                                              **options}.items()
                            if v is not None}
        self._queue_subscribed_at = time.monotonic()
        self._queue_lookup()

    def queue_keepalive(self) -> None:
        spec = getattr(self, "_queue_spec", None)
        every = min(self.queue_resubscribe_s, getattr(self, "_queue_ttl_s", 60.0) / 3)
        if spec and time.monotonic() - self._queue_subscribed_at >= every:
            self._queue_subscribed_at = time.monotonic()
            self._queue_lookup()

    def _queue_lookup(self) -> None:
        if not self.registry:
            return

        def found(reply):
            if reply is None or reply.t == "error" or not reply.b.get("addr"):
                self._queue_subscribed_at = 0.0  # retry on the next keepalive
                return
            self.queue_addr = protocol.address_from_wire(reply.b["addr"])
            self.request(self.queue_addr, protocol.QUEUE_SUBSCRIBE, self._queue_spec,
                         self._queue_subscribed)

        self.request(protocol.address_from_wire(self.registry), protocol.REGISTRY_LOOKUP,
                     {"name": "queue"}, found)

    def _queue_subscribed(self, reply) -> None:
        if reply is None or reply.t == "error":
            self._queue_subscribed_at = 0.0
            if reply is not None:
                self.log("warning", "subscribe_failed", reply.b.get("detail", ""))
            return
        self.queue_sub = reply.b["sub"]
        self._queue_ttl_s = float(reply.b.get("ttl_s") or 60.0)

    @handles(protocol.QUEUE_DELIVER)
    def _queue_deliver(self, env, sender) -> None:
        self.queue_addr = sender
        self.on_queue_messages(env.b["messages"])

    def on_queue_messages(self, messages: list[dict]) -> None:
        """Handle a pushed batch; ack (or nack) every id, now or later."""
        raise NotImplementedError

    def queue_ack(self, ids: list[str]) -> None:
        if ids:
            self.send(self.queue_addr, protocol.QUEUE_ACK.encode({"ids": ids, "quiet": True}))

    def queue_nack(self, ids: list[str], error: str, retry: bool = True) -> None:
        if ids:
            self.send(self.queue_addr, protocol.QUEUE_NACK.encode(
                {"ids": ids, "error": error, "retry": retry, "quiet": True}))
