"""A queue subscriber service for the integration tests (importable by the swarm's processes).

options: recipient | topic, max_in_flight, visibility_s, mode ("ack": ack each batch at once,
"hold": keep everything unacked until told). ``test.events`` reports what it saw;
``test.echo {"cmd": "ack_held"}`` acks what it holds, ``{"cmd": "mode", "mode": M}`` switches.
"""
from __future__ import annotations

from collections import Counter

from actors.queue.client import QueueConsumer
from system import protocol
from system.service import ServiceActor, handles


class Consumer(QueueConsumer, ServiceActor):
    tick_s = 0.2
    queue_resubscribe_s = 1.0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.deliveries: Counter = Counter()
        self.attempts: dict[str, list[int]] = {}
        self.batches: list[int] = []
        self.held: set[str] = set()
        self.max_held = 0
        self.acked = 0

    def on_start(self) -> None:
        opts = self.service_config().get("options", {})
        self.mode = opts.get("mode", "ack")
        self.queue_subscribe(opts.get("recipient"), opts.get("topic"),
                             int(opts.get("max_in_flight", 10)),
                             visibility_s=opts.get("visibility_s"))

    def on_tick(self) -> None:
        self.queue_keepalive()

    def on_queue_messages(self, messages: list[dict]) -> None:
        self.batches.append(len(messages))
        for m in messages:
            self.deliveries[m["id"]] += 1
            self.attempts.setdefault(m["id"], []).append(m["attempts"])
        ids = [m["id"] for m in messages]
        if self.mode == "ack":
            self.queue_ack(ids)
            self.acked += len(ids)
        else:
            self.held.update(ids)
            self.max_held = max(self.max_held, len(self.held))

    @handles(protocol.TEST_EVENTS)
    def _events(self, env, sender) -> None:
        self.reply(sender, env, protocol.OK, {
            "received": sum(self.deliveries.values()), "distinct": len(self.deliveries),
            "redelivered": {i: self.attempts[i] for i, n in self.deliveries.items() if n > 1},
            "held": len(self.held), "max_held": self.max_held, "acked": self.acked,
            "batches": self.batches[-50:], "sub": getattr(self, "queue_sub", None)})

    @handles(protocol.TEST_ECHO)
    def _command(self, env, sender) -> None:
        cmd = env.b.get("cmd")
        if cmd == "ack_held":
            ids = sorted(self.held)
            self.held.clear()
            self.queue_ack(ids)
            self.acked += len(ids)
        elif cmd == "mode":
            self.mode = env.b["mode"]
        self.reply(sender, env, protocol.OK, {"cmd": cmd})
