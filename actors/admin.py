"""Admin actor (globalName ``swarm-admin``): the entry point for CLI, Discord and Twitch commands.

Each command is an ``admin.*`` message; the admin asks the registry (or the owning
supervisor) and answers the requester with ``ok`` or ``error``, correlated by message id.
"""
from __future__ import annotations

from thespian.actors import ActorExitRequest

from system import protocol
from system.service import ServiceActor, handles

REQUEST_TIMEOUT_S = 10.0


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
        self.request(self._registry_addr(), protocol.REGISTRY_STATUS, None,
                     self._answer(sender, env, "registry status"), REQUEST_TIMEOUT_S)

    @handles(protocol.ADMIN_RESTART)
    def _restart(self, env, sender) -> None:
        if self._not_ready(sender, env):
            return
        name = env.b["name"]

        def found(reply):
            if reply is None or reply.t == "error":
                self._answer(sender, env, f"lookup of {name}")(reply)
                return
            parent = reply.b.get("parent_addr")
            if not parent:
                self.reply_error(sender, env, "not_restartable", f"{name} has no supervisor")
                return
            if name == self.name:  # this actor is about to go away: answer now
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
        self.request(self._registry_addr(), protocol.REGISTRY_LOOKUP, {"name": env.b["name"]},
                     self._answer(sender, env, "lookup"), REQUEST_TIMEOUT_S)
