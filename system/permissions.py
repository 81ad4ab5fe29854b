"""One permission policy for every chat surface: principals -> swarm roles -> allowed commands.

    >>> policy = Policy.from_config({"admins": {"users": [42]}, "operators": {"roles": ["7"]}},
    ...                             {"status": "viewer", "restart": "admin"})
    >>> policy.check(Principal("discord", "42", "ann"), "restart").allowed
    True
    >>> d = policy.check(Principal("discord", "9", "bob", roles=("7",)), "restart")
    >>> d.allowed, d.role, d.needed, d.rule
    (False, 'operator', 'admin', 'role 7 is listed in operators.roles')

It knows principals and roles, not Discord or Twitch: a chat service turns its user into a
:class:`Principal` (a Discord user id with its role ids; a Twitch user id with its login and
badges) and declares the least role each of its commands needs. Roles rank ``viewer <
operator < admin``; a principal gets the highest role any rule grants. ``viewers`` is
``everyone`` by default; whatever is not listed gets nothing above viewer (default deny), and
a command the table does not name is refused to everyone.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

ROLES = ("viewer", "operator", "admin")
EVERYONE = "everyone"
_SECTIONS = {"admin": "admins", "operator": "operators", "viewer": "viewers"}


class Principal(NamedTuple):
    """Who asks: a chat user (or ``cli``), as the platform vouches for them."""

    platform: str
    """``discord``, ``twitch``, ``cli``."""
    id: str
    """The platform's stable user id."""
    name: str = ""
    """Display name, for logs and replies only: never matched (anyone can choose one)."""
    roles: tuple[str, ...] = ()
    """Role ids (Discord) or badges (Twitch) the platform reports for this user."""
    aliases: tuple[str, ...] = ()
    """Other identifiers the platform guarantees unique (a Twitch login)."""

    @property
    def label(self) -> str:
        """``discord:42 (ann)``: how the audit log names the principal."""
        return f"{self.platform}:{self.id}" + (f" ({self.name})" if self.name else "")


class Decision(NamedTuple):
    """The answer to "may this principal run this command", with the rule that decided."""

    allowed: bool
    role: str | None
    """The principal's role, or None when no rule grants even viewer."""
    needed: str | None
    """The least role the command needs, or None for a command nobody may run."""
    rule: str
    """Which rule gave the role (or that none did), in config terms."""

    def refusal(self, command: str) -> str:
        """One polite line for the user."""
        if self.needed is None:
            return f"`{command}` is not a command here."
        return (f"Sorry, `{command}` needs the {self.needed} role"
                + (f"; you are a {self.role}." if self.role else "."))


def _ids(values: Any) -> frozenset[str]:
    return frozenset(str(v) for v in values or ())


class _Grant(NamedTuple):
    everyone: bool
    users: frozenset[str]
    roles: frozenset[str]


class Policy:
    """Roles from config, least roles per command from the chat service's command table."""

    def __init__(self, grants: Mapping[str, _Grant], commands: Mapping[str, str]):
        unknown = sorted({r for r in commands.values() if r not in ROLES})
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; expected one of "
                             f"{', '.join(ROLES)}")
        self.grants = dict(grants)
        self.commands = dict(commands)

    @classmethod
    def from_config(cls, block: Mapping[str, Any] | None, commands: Mapping[str, str]) -> Policy:
        """``block``: ``{admins: {users, roles}, operators: {...}, viewers: everyone | {...}}``."""
        block = block or {}
        grants = {}
        for role, section in _SECTIONS.items():
            value = block.get(section, EVERYONE if role == "viewer" else None)
            if value == EVERYONE:
                grants[role] = _Grant(True, frozenset(), frozenset())
            else:
                value = value or {}
                grants[role] = _Grant(False, _ids(value.get("users")), _ids(value.get("roles")))
        return cls(grants, commands)

    def role_of(self, who: Principal) -> tuple[str | None, str]:
        """(highest role granted, the rule that granted it)."""
        names = {who.id, *who.aliases}
        for role in reversed(ROLES):
            grant, section = self.grants[role], _SECTIONS[role]
            if grant.everyone:
                return role, f"{section} is everyone"
            if user := sorted(names & grant.users):
                return role, f"user {user[0]} is listed in {section}.users"
            if match := sorted(set(who.roles) & grant.roles):
                return role, f"role {match[0]} is listed in {section}.roles"
        return None, "no rule grants this user a role (viewers is not everyone)"

    def check(self, who: Principal, command: str) -> Decision:
        role, rule = self.role_of(who)
        needed = self.commands.get(command)
        if needed is None:
            return Decision(False, role, None, f"{command!r} is not in the command table")
        allowed = role is not None and ROLES.index(role) >= ROLES.index(needed)
        return Decision(allowed, role, needed, rule)

    def allowed_commands(self, who: Principal) -> list[str]:
        """The commands ``who`` may run, in table order (what ``help`` lists)."""
        return [c for c in self.commands if self.check(who, c).allowed]
