"""``swarm permissions explain``: what the chat services' policy decides for any principal, from
the config file alone (no swarm needs to run), with the rule that decides.

    swarm permissions explain --user 123 --role 456 restart
"""
from __future__ import annotations

from system.cli import config_of, emit
from system.permissions import Policy, Principal


def _discord(config) -> Policy:
    from actors.discord.actions import COMMANDS
    return Policy.from_config(config.get("services.discord.permissions") or {}, COMMANDS)


def _twitch(config):
    from actors.twitch.levels import ChatPolicy
    return ChatPolicy.from_config(config.get("services.twitch.commands") or {},
                                  config.get("services.twitch.permissions") or {})


# platform -> its policy from the config (role_of, check, commands: the Policy interface)
SURFACES = {"discord": _discord, "twitch": _twitch}


def register(add, common) -> None:
    p = add("permissions", None, "explain the chat services' permission policy")
    sub = p.add_subparsers(dest="permissions_command", required=True, metavar="ACTION")
    e = sub.add_parser("explain", parents=[common], help="which role a user has and which "
                       "commands they may run, with the rule that decides",
                       description="which role a user has and which commands they may run")
    e.set_defaults(func=cmd_explain)
    e.add_argument("command", nargs="?", metavar="COMMAND", help="only this command")
    e.add_argument("--platform", choices=sorted(SURFACES), default="discord")
    e.add_argument("--user", required=True, metavar="ID", help="the platform's user id "
                   "(twitch: the id or the login)")
    e.add_argument("--role", action="append", default=[], metavar="ROLE",
                   help="a role id the user has (twitch: a badge such as moderator, vip, "
                   "subscriber) (repeatable)")


def explain(config, platform: str, user: str, roles: list[str], command: str | None) -> dict:
    policy = SURFACES[platform](config)
    aliases = (user.lower(),) if platform == "twitch" else ()  # a login, or an id
    who = Principal(platform, user, roles=tuple(roles), aliases=aliases)
    role, rule = policy.role_of(who)
    decisions = {c: policy.check(who, c) for c in ([command] if command else policy.commands)}
    return {"principal": who.label, "role": role, "rule": rule,
            "commands": {c: {"allowed": d.allowed, "needs": d.needed, "rule": d.rule}
                         for c, d in decisions.items()}}


def cmd_explain(args) -> int:
    report = explain(config_of(args), args.platform, args.user, args.role, args.command)

    def show(r: dict) -> None:
        role = {None: "nobody", "admin": "an admin", "operator": "an operator"}.get(
            r["role"], f"a {r['role']}")
        print(f"{r['principal']} is {role}: {r['rule']}")
        for command, d in r["commands"].items():
            verdict = "allowed" if d["allowed"] else "refused"
            needs = f"needs {d['needs']}" if d["needs"] else "not a command"
            print(f"  {command:<14} {verdict:<8} ({needs})")

    emit(args, report, show)
    return 0 if args.command is None or report["commands"][args.command]["allowed"] else 1
