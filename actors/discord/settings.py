"""The Discord service's settings, read from ``services.discord`` (validated by the schema).

    >>> s = settings_from({"services": {"discord": {"token": "t", "guild_ids": [1]}},
    ...                    "agents": {"names": ["Agent-1"]}})
    >>> s.prefix, s.guild_ids, s.agents
    ('!', (1,), ('Agent-1',))
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from system.errors import NotConfigured

DEFAULT_API = "https://discord.com"
DEFAULT_GATEWAY = "wss://gateway.discord.gg/"


class Settings(NamedTuple):
    token: str
    guild_ids: tuple[int, ...]
    status_channel_id: int | None
    prefix: str
    permissions: dict
    forward_plain_text: bool
    api_base: str
    gateway_url: str
    sync_commands: bool
    report: dict
    identify_delay_s: float
    agents: tuple[str, ...]
    services: tuple[str, ...]
    """Services the panel's restart select offers (the enabled ones, core excluded)."""
    journal: Path
    """Commands being handled (actors/chat.py Journal)."""


def settings_from(config: dict) -> Settings:
    """Settings of this service; NotConfigured (state ``disabled``) without a token."""
    block = config.get("services", {}).get("discord", {})
    token = block.get("token")
    if not token:
        raise NotConfigured("no bot token: set services.discord.token, e.g. "
                            "\"${env:DISCORD_TOKEN}\"")
    channel = block.get("status_channel_id")
    return Settings(
        token=token, guild_ids=tuple(int(g) for g in block.get("guild_ids") or ()),
        status_channel_id=int(channel) if channel else None,
        prefix=block.get("prefix") or "!", permissions=block.get("permissions") or {},
        forward_plain_text=bool(block.get("forward_plain_text", True)),
        api_base=(block.get("api_base") or DEFAULT_API).rstrip("/"),
        gateway_url=block.get("gateway_url") or DEFAULT_GATEWAY,
        sync_commands=bool(block.get("sync_commands", True)),
        report=block.get("report") or {},
        identify_delay_s=float(block.get("identify_delay_s", 5.0)),
        agents=tuple(config.get("agents", {}).get("names", [])),
        services=tuple(name for name, b in config.get("services", {}).items()
                       if b.get("enabled", True)),
        journal=Path(config.get("system", {}).get("data_dir") or "swarm-data") / "discord"
        / "inflight.db")
