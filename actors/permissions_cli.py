"""``swarm permissions explain``: what the chat services' policy decides for any principal, from
the config file alone (no swarm needs to run), with the rule that decides.

    swarm permissions explain --user 123 --role 456 restart
"""
from __future__ import annotations

from importlib import import_module

from system.cli import config_of, emit
from system.permissions import Policy, Principal

# platform -> (config block of its permissions, its command table "module:NAME")
SURFACES = {"discord": ("services.discord.permissions", "actors.discord.actions:COMMANDS")}


def register(add, common) -> None:
    p = add("permissions", None, "explain the chat services' permission policy")
    sub = p.add_subparsers(dest="permissions_command", required=True, metavar="ACTION")
    e = sub.add_parser("explain", parents=[common], help="which role a user has and which "
                       "commands they may run, with the rule that decides",
                       description="which role a user has and which commands they may run")
    e.set_defaults(func=cmd_explain)
    e.add_argument("command", nargs="?", metavar="COMMAND", help="only this command")
    e.add_argument("--platform", choices=sorted(SURFACES), default="discord")
    e.add_argument("--user", required=True, metavar="ID", help="the platform's user id")
    e.add_argument("--role", action="append", default=[], metavar="ROLE",
                   help="a role id the user has (repeatable)")


def explain(config, platform: str, user: str, roles: list[str], command: str | None) -> dict:
    key, table = SURFACES[platform]
    module, _, name = table.partition(":")
    commands = getattr(import_module(module), name)
    policy = Policy.from_config(config.get(key) or {}, commands)
    who = Principal(platform, user, roles=tuple(roles))
    role, rule = policy.role_of(who)
    decisions = {c: policy.check(who, c) for c in ([command] if command else commands)}
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
