"""Admin actor: the entry point for CLI, Discord and Twitch commands, and the config watcher.

Each command is an ``admin.*`` message; the admin checks and audits it, and forwards it to the
registry or the service that does it (the queue, the gas pipeline), which answers the requester
directly with ``ok`` or ``error``, correlated by the request's id (``forward_named``: one hop
fewer than asking and passing the answer on); restarts go through the owning supervisor.
External clients find it through the root supervisor (see ``system/admin.py``).

Requests name who asks in ``principal`` (``cli:<user>``, ``discord:<id> (<name>)``,
``twitch:<login>``): every command that changes something is logged with it (event ``audit``),
so the CLI and the chat services leave one audit trail.
"""
from __future__ import annotations

import time

from thespian.actors import ActorExitRequest

from actors.reload import ConfigWatcher
from system import protocol
from system.service import ServiceActor, handles

REQUEST_TIMEOUT_S = 10.0
# admin.queue / admin.gas ops -> (message to the service, whether it changes something: audited)
_QUEUE_OPS = {"stats": (protocol.QUEUE_STATS, False), "dlq": (protocol.QUEUE_DLQ, False),
              "requeue": (protocol.QUEUE_REQUEUE, True), "purge": (protocol.QUEUE_PURGE, True)}
_GAS_OPS = {"status": (protocol.GAS_STATUS, False), "history": (protocol.GAS_HISTORY, False),
            "progress": (protocol.GAS_PROGRESS, True), "unstall": (protocol.GAS_UNSTALL, True),
            "brain_add": (protocol.BRAIN_ADD, True), "brain_search": (protocol.BRAIN_SEARCH, False),
            "brain_show": (protocol.BRAIN_SHOW, False), "brain_list": (protocol.BRAIN_LIST, False)}
_UNAVAILABLE = {"queue": "the queue service", "gas": "the gas pipeline"}


class Admin(ServiceActor):
    kind = "core"
    tick_s = 1.0

    def _registry_addr(self):
        return protocol.address_from_wire(self.registry) if self.registry else None

    def _answer(self, client, env, what: str):
        """A reply callback: forward a body (or an error, or a timeout) to the client."""
        def done(reply):
            if reply is None:
                self.reply_error(client, env, "timeout", f"{what}: no answer within "
                                 f"{REQUEST_TIMEOUT_S:g}s")
            elif reply.t == "error":
                self.reply_error(client, env, reply.b["code"], reply.b["detail"])
            else:
                self.reply(client, env, protocol.OK, reply.b)
        return done

    def _audit(self, env, action: str) -> None:
        principal = str(env.b.get("principal") or "unknown")[:200]
        self.log("info", "audit", f"{principal}: {action}", principal=principal, command=env.t)

    def _not_ready(self, sender, env) -> bool:
        if self.parent is not None and self.registry is not None:
            return False
        self.reply_error(sender, env, "not_ready", "the swarm admin is restarting; retry")
        if self.parent is None:
            # Created by a name lookup while the real admin was restarting: not part of the tree.
            self.send(self.myAddress, ActorExitRequest())
        return True

    @handles(protocol.ADMIN_STATUS)
    def _status(self, env, sender) -> None:
        if self._not_ready(sender, env):
            return
        reload_state = self.watcher.last.view() if self.watcher.last else None
        self._to_registry(env, sender, protocol.REGISTRY_STATUS,  # with this part of the answer
                          {"config": {"file": self.config_file, "last_reload": reload_state}})

    def _to_registry(self, env, sender, mtype: protocol.MessageType, body: dict) -> None:
        """Forwarded: the registry answers the requester (lost if the registry is restarting
        that moment: the client's own timeout then tells)."""
        self.send(self._registry_addr(), mtype.encode(
            body, id=env.id, rt=env.rt or protocol.address_to_wire(sender)))

    @handles(protocol.ADMIN_RESTART)
    def _restart(self, env, sender) -> None:
        if self._not_ready(sender, env):
            return
        name = env.b["name"]
        self._audit(env, f"restart {name}")

        def found(reply):
            if reply is None or reply.t == "error":
                self._answer(sender, env, f"lookup of {name}")(reply)
                return
            parent = reply.b.get("parent_addr")
            if not parent:
                self.reply_error(sender, env, "not_restartable", f"{name} has no supervisor")
                return
            if name == self.name or reply.b.get("addr") == protocol.address_to_wire(self.parent):
                # this actor (or its supervisor, with it) is about to go away: answer now; a
                # client would otherwise ask the next admin again, which restarts it again
                self.send(protocol.address_from_wire(parent),
                          protocol.SUP_RESTART.encode({"name": name}))
                self.reply(sender, env, protocol.OK, {"name": name, "pid": None})
                return
            self.request(protocol.address_from_wire(parent), protocol.SUP_RESTART,
                         {"name": name}, self._answer(sender, env, f"restart of {name}"),
                         REQUEST_TIMEOUT_S)

        self.request(self._registry_addr(), protocol.REGISTRY_LOOKUP, {"name": name}, found,
                     REQUEST_TIMEOUT_S)

    @handles(protocol.ADMIN_LOOKUP)
    def _lookup(self, env, sender) -> None:
        if self._not_ready(sender, env):
            return
        self._to_registry(env, sender, protocol.REGISTRY_LOOKUP, {"name": env.b["name"]})

    # -- service commands: forwarded to the service's cached address, which the registry keeps
    # up to date (ServiceActor.forward_named: a restarted queue has a new address)
    def _to_service(self, service: str, sender, env, mtype: protocol.MessageType, body: dict,
                    repeatable: bool, audit: str | None = None) -> None:
        if self._not_ready(sender, env):
            return

        def missing(lookup):
            if lookup is not None and (lookup.t == "error" and lookup.b["code"] == "unknown_service"
                                       or lookup.b.get("state") == "removed"):
                self.reply_error(sender, env, f"{service}_unavailable",
                                 f"{_UNAVAILABLE[service]} is not configured")
            elif lookup is None or lookup.t == "error":
                self._answer(sender, env, f"lookup of {service}")(lookup)
            else:
                state = lookup.b.get("state")
                code = "not_ready" if state in ("starting", "restarting") \
                    else f"{service}_unavailable"
                self.reply_error(sender, env, code, f"{_UNAVAILABLE[service]} is {state}")

        self.forward_named(service, env, sender, mtype, body, missing, REQUEST_TIMEOUT_S,
                           repeatable)
        if audit:  # after the request is on its way: logging is a message too
            self._audit(env, audit)

    @handles(protocol.ADMIN_SEND)
    def _send(self, env, sender) -> None:
        items = env.b["items"]
        to = sorted({str(i.get("recipient"))[:64] for i in items if isinstance(i, dict)})
        with_ids = all(isinstance(i, dict) and i.get("id") for i in items)  # sent twice: one copy
        self._to_service("queue", sender, env, protocol.QUEUE_ENQUEUE, {"items": items}, with_ids,
                         audit=f"send {len(items)} message(s) to {', '.join(to)}"[:300])

    @handles(protocol.ADMIN_QUEUE)
    def _queue_op(self, env, sender) -> None:
        self._service_op("queue", _QUEUE_OPS, env, sender)

    @handles(protocol.ADMIN_GAS)
    def _gas_op(self, env, sender) -> None:
        self._service_op("gas", _GAS_OPS, env, sender)

    def _service_op(self, service: str, ops: dict, env, sender) -> None:
        """``op`` and its fields -> that service's message; ops that change something are
        audited."""
        op = env.b["op"]
        if op not in ops:
            self.reply_error(sender, env, "bad_request", f"unknown {service} command {op!r}; "
                             f"expected one of {', '.join(ops)}")
            return
        mtype, changes = ops[op]
        body = {k: v for k, v in env.b.items() if k not in ("op", "principal")}
        self._to_service(service, sender, env, mtype, body, not changes, audit=(
            f"{service} {op} " + " ".join(f"{k}={str(v)[:60]}" for k, v in body.items()))[:300]
            if changes else None)

    @handles(protocol.ADMIN_AGENTS)
    def _agents(self, env, sender) -> None:
        """Inbox depths from the queue and gas state from the pipeline, each when available:
        one view of every agent for the chat services."""
        if self._not_ready(sender, env):
            return
        names = list(self.config.get("agents", {}).get("names", []))
        answers: dict[str, dict | None] = {}

        def collect(part: str):
            def done(reply):
                answers[part] = reply.b if reply is not None and reply.t == "ok" else None
                if len(answers) == 2:
                    self.reply(sender, env, protocol.OK, _agents_view(names, answers))
            return done

        self._to_service_quiet("queue", protocol.QUEUE_STATS, {}, collect("queue"))
        self._to_service_quiet("gas", protocol.GAS_STATUS, {}, collect("gas"))

    def _to_service_quiet(self, service: str, mtype, body: dict, done) -> None:
        """Ask a service found in the registry; ``done(None)`` if it is not there or silent."""
        self.request_named(service, mtype, body, done, REQUEST_TIMEOUT_S, lambda _: done(None))

    # -- configuration reload ---------------------------------------------------------------------
    def on_start(self) -> None:
        self.watcher = ConfigWatcher(self.config_file, self.config)

    def on_tick(self) -> None:
        if self.watcher.due(time.time()) and self.watcher.changed_on_disk():
            self.log("info", "config_file_changed", f"{self.config_file} changed; reloading")
            self._reload()

    @handles(protocol.ADMIN_RELOAD)
    def _reload_command(self, env, sender) -> None:
        if self._not_ready(sender, env):
            return
        self._audit(env, "reload")
        outcome = self._reload()
        if outcome.ok:
            self.reply(sender, env, protocol.OK, outcome.view())
        else:
            self.reply_error(sender, env, "config", "; ".join(outcome.errors))

    def _reload(self):
        """Validate first; apply only a valid config (the old one stays in force otherwise)."""
        outcome = self.watcher.reload()
        if not outcome.ok:
            self.log("error", "reload_rejected", "new config rejected; the old one stays in "
                     "force", errors=outcome.errors)
            self.alert("warning", "config reload rejected", "; ".join(outcome.errors)[:1000],
                       key="config:rejected")
            return outcome
        summary = outcome.summary
        if summary["needs_full_restart"]:
            self.log("warning", "reload_partial", "these keys apply only after `swarm stop` and "
                     "`swarm start`: " + ", ".join(summary["needs_full_restart"]))
        if not summary["empty"] and self.root:
            self.send(protocol.address_from_wire(self.root),
                      protocol.TREE_RECONFIGURE.encode({"config": outcome.config}))
        self.log("info", "reloaded", "config reloaded", **{k: v for k, v in summary.items()
                                                           if v and k != "empty"})
        return outcome


def _agents_view(names: list[str], answers: dict) -> dict:
    queue, gas = answers.get("queue") or {}, answers.get("gas") or {}
    ready = queue.get("ready_by_recipient", {})
    by_agent = {a["agent"]: a for a in gas.get("agents", [])}
    return {"agents": [{"name": n, "inbox": ready.get(n, 0), "gas": by_agent.get(n)}
                       for n in names],
            "queue": bool(queue), "gas": bool(gas)}
