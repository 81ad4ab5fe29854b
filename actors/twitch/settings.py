"""The Twitch service's settings, read from ``services.twitch`` (validated by the schema).

    >>> s = settings_from({"services": {"twitch": {
    ...     "client_id": "c", "client_secret": "s", "bot_id": "1", "bot_token": "t",
    ...     "bot_refresh_token": "r", "channels": ["Streamer", "#other"]}},
    ...     "system": {"data_dir": "/tmp/d"}, "agents": {"names": ["Agent-1"]}})
    >>> s.channels, s.prefix, s.agents, str(s.token_file)
    (('streamer', 'other'), '!', ('Agent-1',), '/tmp/d/twitch/tokens.json')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from actors.twitch.interpret import InterpretConfig
from actors.twitch.levels import DEFAULT_LEVELS, ChatPolicy, Cooldown, Cooldowns, config_key
from actors.twitch.limiter import OutputLimiter
from system.errors import ConfigError, NotConfigured

DEFAULT_API = "https://api.twitch.tv"
DEFAULT_ID = "https://id.twitch.tv"
DEFAULT_EVENTSUB = "wss://eventsub.wss.twitch.tv/ws"
# Cooldowns unless services.twitch.commands.NAME says otherwise: chat-wide answers are held
# back globally, a question reaches an agent once per user per 30 s.
DEFAULT_COOLDOWNS = {"status": Cooldown(global_s=5), "agents": Cooldown(global_s=5),
                     "gas": Cooldown(global_s=5), "quote": Cooldown(global_s=10),
                     "help": Cooldown(global_s=10), "ask": Cooldown(user_s=30)}
REQUIRED = ("client_id", "client_secret", "bot_id", "bot_token", "bot_refresh_token",
            "channels")


class Settings(NamedTuple):
    client_id: str
    client_secret: str
    bot_id: str
    bot_token: str
    bot_refresh_token: str
    channels: tuple[str, ...]
    """The broadcasters' logins (lower case): the channels the bot joins."""
    owner_id: str | None
    prefix: str
    policy: ChatPolicy
    cooldowns: Cooldowns
    interpretation: InterpretConfig
    forward_free_text: bool
    limits: dict
    """OutputLimiter keyword arguments."""
    timers: dict
    announce: dict
    api_base: str
    id_base: str
    eventsub_url: str
    token_file: Path
    quotes_db: Path
    quotes_file: Path | None
    resubscribe_after_s: float
    agents: tuple[str, ...]
    journal: Path
    """Commands being handled (actors/chat.py Journal)."""

    def limiter(self) -> OutputLimiter:
        return OutputLimiter(**self.limits)


def settings_from(config: dict) -> Settings:
    """Settings of this service; NotConfigured (state ``disabled``) while a credential is
    missing, ConfigError for a value that cannot work."""
    block: dict[str, Any] = config.get("services", {}).get("twitch", {})
    missing = [key for key in REQUIRED if not block.get(key)]
    if missing:
        raise NotConfigured("missing " + ", ".join(f"services.twitch.{k}" for k in missing)
                            + " (secrets as \"${env:NAME}\" or \"${file:PATH}\")")
    data_dir = Path(config.get("system", {}).get("data_dir") or "swarm-data")
    commands, cooldown_rules = block.get("commands") or {}, block.get("cooldowns") or {}
    for key, table in (("commands", commands), ("cooldowns", cooldown_rules)):
        unknown = sorted(set(table) - {config_key(c) for c in DEFAULT_LEVELS})
        if unknown:
            raise ConfigError(f"services.twitch.{key}: unknown command(s) {', '.join(unknown)}")
    owner = str(block["owner_id"]) if block.get("owner_id") else None
    permissions = dict(block.get("permissions") or {})
    if owner:  # the bot's owner is an admin wherever the bot is
        admins = dict(permissions.get("admins") or {})
        permissions["admins"] = {**admins, "users": [*(admins.get("users") or []), owner]}
    try:
        rules = dict(DEFAULT_COOLDOWNS)
        for name in DEFAULT_LEVELS:
            if config_key(name) in cooldown_rules:
                rules[name] = Cooldown.from_config(cooldown_rules[config_key(name)])
        prefix = block.get("prefix") or "!"
        interpretation = InterpretConfig.from_config(
            {"prefix": prefix, **(block.get("interpretation") or {})})
        policy = ChatPolicy.from_config(commands, permissions)
        cooldowns = Cooldowns(rules, bypass=block.get("cooldown_bypass", "moderator"),
                              notify=bool(block.get("cooldown_notice", True)))
        limits = dict(block.get("limits") or {})
        OutputLimiter(**limits)  # refuse what cannot work now, not on the first line
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"services.twitch: {exc}") from None
    quotes = block.get("quotes") or {}
    return Settings(
        client_id=block["client_id"], client_secret=block["client_secret"],
        bot_id=str(block["bot_id"]), bot_token=block["bot_token"],
        bot_refresh_token=block["bot_refresh_token"],
        channels=tuple(dict.fromkeys(str(c).strip().lstrip("#").lower()
                                     for c in block["channels"])),
        owner_id=owner, prefix=prefix,
        policy=policy, cooldowns=cooldowns, interpretation=interpretation,
        forward_free_text=bool(block.get("forward_free_text", True)), limits=limits,
        timers=block.get("timers") or {}, announce=block.get("announce") or {},
        api_base=(block.get("api_base") or DEFAULT_API).rstrip("/"),
        id_base=(block.get("id_base") or DEFAULT_ID).rstrip("/"),
        eventsub_url=block.get("eventsub_url") or DEFAULT_EVENTSUB,
        token_file=Path(block.get("token_file") or data_dir / "twitch" / "tokens.json"),
        quotes_db=Path(quotes.get("db") or data_dir / "twitch" / "quotes.db"),
        quotes_file=Path(quotes["file"]) if quotes.get("file") else None,
        resubscribe_after_s=float(block.get("resubscribe_after_s", 5.0)),
        agents=tuple(config.get("agents", {}).get("names", [])),
        journal=data_dir / "twitch" / "inflight.db")
