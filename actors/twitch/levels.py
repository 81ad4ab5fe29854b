"""User levels as streamers know them from Nightbot and StreamElements, and command cooldowns.

Pure: the level comes from a chat message's EventSub badges, the time is passed in.

    >>> level_of([{"set_id": "vip", "id": "1", "info": ""}], chatter_id="42", broadcaster_id="7")
    <Level.VIP: 2>
    >>> cooldowns = Cooldowns({"status": Cooldown(global_s=10, user_s=30)})
    >>> cooldowns.check("status", "alice", Level.EVERYONE, now=0.0)
    (True, None)
    >>> cooldowns.check("status", "alice", Level.EVERYONE, now=12.0)
    (False, '!status is cooling down: wait 18s')
    >>> cooldowns.check("status", "alice", Level.EVERYONE, now=13.0)  # told once per window
    (False, None)
    >>> cooldowns.check("status", "bob", Level.EVERYONE, now=12.0)
    (True, None)
    >>> cooldowns.check("status", "carol", Level.MODERATOR, now=12.5)  # bypass
    (True, None)
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from system.permissions import Decision, Policy


class Level(IntEnum):
    """Ordered: a command allowed at one level is allowed at every higher one."""

    EVERYONE = 0
    SUBSCRIBER = 1
    VIP = 2
    MODERATOR = 3
    BROADCASTER = 4

    @classmethod
    def parse(cls, value: Level | str) -> Level:
        """A member, or its name in any case (``"moderator"``, also ``"mod"``); else
        ValueError."""
        if isinstance(value, Level):
            return value
        name = str(value).strip().upper()
        try:
            return cls[{"MOD": "MODERATOR", "SUB": "SUBSCRIBER"}.get(name, name)]
        except KeyError:
            raise ValueError(f"unknown user level {value!r} (one of "
                             f"{', '.join(m.name.lower() for m in cls)})") from None


# Badge set ids that grant a level in the channel. "founder" replaces "subscriber" for the
# first subscribers of a channel; "lead_moderator" is a moderator with extra tools. Global
# badges (staff, partner, turbo...) say nothing about this channel.
BADGE_LEVELS = {"broadcaster": Level.BROADCASTER, "lead_moderator": Level.MODERATOR,
                "moderator": Level.MODERATOR, "vip": Level.VIP,
                "subscriber": Level.SUBSCRIBER, "founder": Level.SUBSCRIBER}


def level_of(badges: Iterable[Any], chatter_id: str | None = None,
             broadcaster_id: str | None = None) -> Level:
    """The highest level ``badges`` grant: dicts as in the EventSub event or objects with a
    ``set_id`` (twitchio's ChatMessageBadge). The broadcaster is recognized by id too, since
    a broadcaster may hide the badge."""
    if chatter_id is not None and str(chatter_id) == str(broadcaster_id):
        return Level.BROADCASTER
    level = Level.EVERYONE
    for badge in badges or ():
        set_id = badge.get("set_id") if isinstance(badge, Mapping) else getattr(
            badge, "set_id", None)
        level = max(level, BADGE_LEVELS.get(set_id, Level.EVERYONE))
    return level


@dataclass(frozen=True)
class Cooldown:
    """Seconds between two uses of a command: by anyone (``global_s``), by one user
    (``user_s``)."""

    global_s: float = 0.0
    user_s: float = 0.0

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> Cooldown:
        """From ``{"global_s": 10, "user_s": 30}`` (missing keys: no cooldown)."""
        unknown = set(data) - {"global_s", "user_s"}
        if unknown:
            raise ValueError(f"unknown cooldown key(s) {sorted(unknown)}")
        global_s, user_s = float(data.get("global_s", 0)), float(data.get("user_s", 0))
        if not (global_s >= 0 and user_s >= 0):  # also refuses NaN
            raise ValueError("cooldowns must be >= 0 seconds")
        return cls(global_s, user_s)


_PRUNE_AT = 4096  # per-user entries kept before expired ones are swept (a raid is ~1000 users)


class Cooldowns:
    """Per-command global and per-user cooldowns.

    ``rules``: command -> Cooldown (or its config mapping); commands without a rule use
    ``default``. Users at ``bypass`` level or above are never held back, and their uses do
    not start a cooldown (a moderator trying a command does not lock viewers out).
    A refused user hears one "wait Ns" per cooldown window if ``notify``, else nothing:
    answering every refused try would itself flood the chat.
    """

    def __init__(self, rules: Mapping[str, Cooldown | Mapping[str, Any]] | None = None, *,
                 bypass: Level | str = Level.MODERATOR, notify: bool = True,
                 default: Cooldown = Cooldown()):
        self.rules = {_command(name): rule if isinstance(rule, Cooldown)
                      else Cooldown.from_config(rule) for name, rule in (rules or {}).items()}
        self.bypass, self.notify, self.default = Level.parse(bypass), notify, default
        self._last_global: dict[str, float] = {}
        self._last_user: dict[tuple[str, str], float] = {}
        self._told_until: dict[tuple[str, str], float] = {}

    def check(self, command: str, user: str, level: Level, now: float) -> tuple[bool, str | None]:
        """Whether ``user`` may run ``command`` now (the use is then recorded), and the
        notice to answer a refusal with (None: stay silent)."""
        command = _command(command)
        if level >= self.bypass:
            return True, None
        rule = self.rules.get(command, self.default)
        key = (command, user)
        wait = max(self._last_global.get(command, -math.inf) + rule.global_s,
                   self._last_user.get(key, -math.inf) + rule.user_s) - now
        if wait <= 0:
            self._last_global[command] = now
            self._last_user[key] = now
            if len(self._last_user) > _PRUNE_AT:
                self._prune(now)
            return True, None
        if not self.notify or self._told_until.get(key, -math.inf) > now:
            return False, None
        self._told_until[key] = now + wait
        return False, f"!{command} is cooling down: wait {math.ceil(wait)}s"

    def _prune(self, now: float) -> None:
        longest = max([self.default.user_s, *(r.user_s for r in self.rules.values())])
        self._last_user = {k: t for k, t in self._last_user.items() if t + longest > now}
        self._told_until = {k: t for k, t in self._told_until.items() if t > now}


def _command(name: str) -> str:
    return name.strip().lstrip("!").lower()


# -- who may run what ------------------------------------------------------------------------
# The least level of each command (``services.twitch.commands.NAME.level`` overrides it):
# agent-steering commands and quote edits are for moderators and up.
DEFAULT_LEVELS: dict[str, Level] = {
    "help": Level.EVERYONE, "status": Level.EVERYONE, "agents": Level.EVERYONE,
    "gas": Level.EVERYONE, "quote": Level.EVERYONE, "ask": Level.EVERYONE,
    "quote add": Level.MODERATOR, "quote remove": Level.MODERATOR,
    "agent": Level.MODERATOR, "broadcast": Level.MODERATOR, "unstall": Level.MODERATOR,
}
# What a swarm role from the allow-list (the shared permission policy) counts as in chat.
ROLE_LEVELS = {"viewer": Level.EVERYONE, "operator": Level.MODERATOR,
               "admin": Level.BROADCASTER}


def config_key(command: str) -> str:
    """``quote add`` -> ``quote_add``: the command's key under services.twitch.commands."""
    return command.replace(" ", "_")


class ChatPolicy:
    """Twitch's answer to "may this chatter run this command": the chatter's level is the
    highest of what their badges grant and what the allow-list (a shared
    :class:`~system.permissions.Policy` over logins and ids) grants; a command needs its
    configured level. The same interface as ``Policy`` (``role_of``, ``check``,
    ``allowed_commands``, ``commands``), so ``swarm permissions explain`` asks either.

    >>> from system.permissions import Principal
    >>> policy = ChatPolicy.from_config({}, {"operators": {"users": ["otto"]}})
    >>> policy.check(Principal("twitch", "9", "vic"), "agent").allowed
    False
    >>> d = policy.check(Principal("twitch", "8", "otto", aliases=("otto",)), "agent")
    >>> d.allowed, d.role, d.rule
    (True, 'moderator', 'user otto is listed in operators.users')
    """

    def __init__(self, levels: Mapping[str, Level], allow: Any):
        self.levels = dict(levels)
        self.allow = allow
        self.commands = {name: level.name.lower() for name, level in self.levels.items()}

    @classmethod
    def from_config(cls, commands: Mapping[str, Any] | None,
                    permissions: Mapping[str, Any] | None) -> ChatPolicy:
        levels = dict(DEFAULT_LEVELS)
        for name in levels:
            rule = (commands or {}).get(config_key(name)) or {}
            if "level" in rule:
                levels[name] = Level.parse(rule["level"])
        # the allow-list grants roles to listed users only: nobody is an operator by default
        block = {"viewers": "everyone", **{k: v for k, v in (permissions or {}).items()
                                           if k in ("admins", "operators")}}
        return cls(levels, Policy.from_config(block, {}))

    def role_of(self, who: Any) -> tuple[str, str]:
        """(level name, the rule that gave it): badges, or the allow-list if it grants more."""
        badges = level_of([{"set_id": r} for r in who.roles])
        rule = f"badge {badges.name.lower()}" if badges else "no badge (everyone)"
        role, why = self.allow.role_of(who)
        listed = ROLE_LEVELS.get(role, Level.EVERYONE)
        if listed > badges:
            return listed.name.lower(), why
        return badges.name.lower(), rule

    def level(self, who: Any) -> Level:
        return Level.parse(self.role_of(who)[0])

    def check(self, who: Any, command: str):
        level, rule = self.role_of(who)
        needed = self.levels.get(command)
        if needed is None:
            return Decision(False, level, None, f"{command!r} is not a command")
        return Decision(Level.parse(level) >= needed, level, needed.name.lower(), rule)

    def allowed_commands(self, who: Any) -> list[str]:
        return [c for c in self.levels if self.check(who, c).allowed]


def refusal(command: str, needed: str | None) -> str:
    """One polite line for a refused chatter."""
    if needed is None:
        return f"!{command} is not a command here."
    who = {"broadcaster": "the broadcaster", "vip": "VIPs"}.get(needed, f"{needed}s")
    return f"!{command} is for {who} and up."
