"""The simulated Discord platform's data: one guild as Discord holds it (users, members,
roles, channels, messages, application commands, interactions) and the Discord-shaped JSON
objects built from it. No I/O here: :class:`actors.discord.simulator.SimDiscord` (which is a
GuildState) stores, dispatches and serves them.
"""
from __future__ import annotations

import copy
import datetime
import itertools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from actors.discord.sim_gateway import GUILD_MEMBERS

GUILD_ID = 900000000000000001
APP_ID = 900000000000000002      # a modern app's bot user has the application's id
OWNER_ID = 900000000000000003
DISCORD_EPOCH_MS = 1420070400000
EPHEMERAL, LOADING = 1 << 6, 1 << 7            # message flags
ADMINISTRATOR = 1 << 3
# VIEW_CHANNEL, SEND_MESSAGES, EMBED_LINKS, ATTACH_FILES, READ_MESSAGE_HISTORY, ADD_REACTIONS,
# USE_EXTERNAL_EMOJIS, USE_APPLICATION_COMMANDS, SEND_MESSAGES_IN_THREADS
EVERYONE_PERMISSIONS = sum(1 << bit for bit in (10, 11, 14, 15, 16, 6, 18, 31, 38))
ALL_PERMISSIONS = (1 << 51) - 1
ATTACHMENT_LIMIT = 10 * 1024 * 1024
_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


@dataclass
class Interaction:
    id: str
    token: str
    type: int                      # 2 command, 3 component, 5 modal submit
    channel_id: int
    user_id: int
    created: float
    message_id: str | None         # the message a component is on (for a modal: its opener's)
    response_type: int | None = None
    original_id: str | None = None  # the message a type 4/5 response created
    followup_ids: list[str] = field(default_factory=list)
    modal: dict | None = None       # the modal a type 9 response opened
    modal_submitted: bool = False


class GuildState:
    """The guild, the bot's user and member (with the managed role Discord gives an added
    bot), and builders of Discord's objects (ids are strings, as on the wire)."""

    def __init__(self, *, guild_id: int, guild_name: str, app_id: int, bot_user_id: int,
                 bot_name: str, owner_id: int):
        self.guild_id, self.guild_name, self.owner_id = guild_id, guild_name, owner_id
        self.app_id, self.bot_user_id = app_id, bot_user_id
        self._users: dict[int, dict] = {}
        self._members: dict[int, dict] = {}      # user id -> {"roles", "nick", "joined_at"}
        self._roles: dict[int, dict] = {}
        self._channels: dict[int, dict] = {}
        self._dms: dict[int, dict] = {}          # user id -> their DM channel with the bot
        self._messages: dict[str, dict] = {}     # every message, ephemeral ones too
        self._history: dict[int, list[str]] = {}  # visible message ids per channel, in order
        self._commands: dict[int | None, list[dict]] = {}  # guild id (None: global) -> commands
        self._interactions: dict[str, Interaction] = {}
        self._by_token: dict[str, Interaction] = {}
        self._ids = itertools.count()
        self._last_id = 0
        self._add_user(bot_user_id, bot_name, bot=True)
        self._roles[guild_id] = self._role_object(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0)
        bot_role = self._snowflake()
        self._roles[bot_role] = self._role_object(bot_role, bot_name, ADMINISTRATOR, 1) | {
            "managed": True, "tags": {"bot_id": str(bot_user_id)}}
        self._members[bot_user_id] = {"roles": [bot_role], "nick": None, "joined_at": now_iso()}

    def _snowflake(self) -> int:
        # Real snowflakes (time << 22 | counter) so discord.py's created_at makes sense;
        # strictly increasing, so "newer than" is a comparison of ids.
        value = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22 | next(self._ids) & 0xFFF
        self._last_id = max(value, self._last_id + 1)
        return self._last_id

    def _add_user(self, user_id: int, name: str, bot: bool) -> None:
        self._users[user_id] = {"id": str(user_id), "username": name, "global_name": name,
                                "discriminator": "0", "avatar": None, "bot": bot,
                                "public_flags": 0, "flags": 0}

    def _user_object(self, user_id: int) -> dict:
        return copy.deepcopy(self._users[user_id])

    @staticmethod
    def _role_object(role_id: int, name: str, permissions: int, position: int) -> dict:
        return {"id": str(role_id), "name": name, "permissions": str(permissions),
                "position": position, "color": 0, "hoist": False, "managed": False,
                "mentionable": False, "icon": None, "unicode_emoji": None, "flags": 0}

    def _member_object(self, user_id: int, with_user: bool = True) -> dict:
        m = self._members[user_id]
        member = {"roles": [str(r) for r in m["roles"]], "nick": m["nick"],
                  "joined_at": m["joined_at"], "premium_since": None, "deaf": False,
                  "mute": False, "pending": False, "flags": 0, "avatar": None,
                  "communication_disabled_until": None}
        return member | {"user": self._user_object(user_id)} if with_user else member

    def _member_objects(self) -> list[dict]:
        return [self._member_object(uid) for uid in self._members]

    def _permissions(self, user_id: int) -> int:
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        value = int(self._roles[self.guild_id]["permissions"])
        for role_id in self._members[user_id]["roles"]:
            if role_id in self._roles:
                value |= int(self._roles[role_id]["permissions"])
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

    def _guild_object(self, intents: int) -> dict:
        # Without GUILD_MEMBERS Discord sends only the bot's own member.
        members = (self._member_objects() if intents & GUILD_MEMBERS
                   else [self._member_object(self.bot_user_id)])
        return {
            "id": str(self.guild_id), "name": self.guild_name, "owner_id": str(self.owner_id),
            "unavailable": False, "large": False, "member_count": len(self._members),
            "joined_at": self._members[self.bot_user_id]["joined_at"],
            "roles": copy.deepcopy(list(self._roles.values())),
            "channels": copy.deepcopy(list(self._channels.values())), "members": members,
            "features": [], "emojis": [], "stickers": [], "threads": [], "voice_states": [],
            "presences": [], "stage_instances": [], "guild_scheduled_events": [],
            "soundboard_sounds": [], "icon": None, "description": None,
            "preferred_locale": "en-US", "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0,
            "nsfw_level": 0, "premium_tier": 0, "system_channel_id": None,
        }

    def _channel_object(self, channel_id: int) -> dict | None:
        """A guild channel, or a DM channel (type 1, no guild)."""
        return self._channels.get(channel_id) or next(
            (dm for dm in self._dms.values() if int(dm["id"]) == channel_id), None)

    def _require(self, channel_id: int | None, user_id: int) -> None:
        if channel_id is not None and self._channel_object(channel_id) is None:
            raise LookupError(f"no channel {channel_id}: add_channel first")
        if user_id not in self._members:
            raise LookupError(f"user {user_id} is not a member: add_member first")

    def _new_message(self, channel_id: int, author_id: int, payload: dict,
                     attachments: list[dict], flags: int = 0) -> dict:
        content = payload.get("content") or ""
        mentioned = [int(u) for u in _MENTION.findall(content) if int(u) in self._users]
        message = {
            "id": str(self._snowflake()), "channel_id": str(channel_id),
            "author": self._user_object(author_id), "content": content,
            "timestamp": now_iso(), "edited_timestamp": None, "tts": bool(payload.get("tts")),
            "mention_everyone": False,
            "mentions": [self._user_object(u) | ({"member": self._member_object(u, False)}
                                                 if u in self._members else {})
                         for u in dict.fromkeys(mentioned)],
            "mention_roles": [r for r in _ROLE_MENTION.findall(content)
                              if int(r) in self._roles],
            "attachments": attachments, "embeds": payload.get("embeds") or [],
            "components": payload.get("components") or [], "pinned": False, "type": 0,
            "flags": (payload.get("flags") or 0) | flags, "reactions": [],
        }
        if author_id == self.bot_user_id and payload.get("nonce") is not None:
            message["nonce"] = payload["nonce"]
        return message

    def _event_message(self, message: dict) -> dict:
        author = int(message["author"]["id"])
        if int(message["channel_id"]) not in self._channels:  # a DM: no guild, no member
            return copy.deepcopy(message)
        event = message | {"guild_id": str(self.guild_id)}
        if author in self._members:
            event["member"] = self._member_object(author, with_user=False)
        return event

    def _visible(self, message: dict) -> bool:
        return message["id"] in self._history.get(int(message["channel_id"]), ())

    def _find_command(self, scope: int | None, name: str) -> dict | None:
        return next((c for c in self._commands.get(scope, []) if c["name"] == name
                     and c.get("type", 1) == 1), None)

    def _options(self, name: str, definitions: list[dict], given: dict[str, Any],
                 resolved: dict[str, dict]) -> list[dict]:
        known = {d["name"]: d for d in definitions}
        unknown = set(given) - set(known)
        if unknown:
            raise ValueError(f"/{name} has no option(s) {sorted(unknown)}; it has {sorted(known)}")
        missing = [n for n, d in known.items() if d.get("required") and n not in given]
        if missing:
            raise ValueError(f"/{name} needs option(s) {missing}")
        out = []
        for key, value in given.items():
            kind = known[key]["type"]
            if kind in (6, 7, 8, 9):  # user, channel, role, mentionable: an id, resolved
                value = str(int(value))
                self._resolve(kind, int(value), resolved)
            else:
                value = {3: str, 4: int, 5: bool, 10: float}.get(kind, lambda v: v)(value)
            out.append({"name": key, "type": kind, "value": value})
        return out

    def _resolve(self, kind: int, target: int, resolved: dict[str, dict]) -> None:
        if kind in (6, 9) and target in self._users:
            resolved.setdefault("users", {})[str(target)] = self._user_object(target)
            if target in self._members:
                resolved.setdefault("members", {})[str(target)] = self._member_object(
                    target, with_user=False) | {"permissions": str(self._permissions(target))}
        elif kind in (8, 9) and target in self._roles:
            resolved.setdefault("roles", {})[str(target)] = copy.deepcopy(self._roles[target])
        elif kind == 7 and target in self._channels:
            channel = self._channels[target]
            resolved.setdefault("channels", {})[str(target)] = {
                "id": channel["id"], "name": channel["name"], "type": channel["type"],
                "permissions": str(self._permissions(self.bot_user_id))}
        else:
            wanted = {6: "user", 7: "channel", 8: "role", 9: "user or role"}[kind]
            raise LookupError(f"option target {target} is not a known {wanted}")

    def _component(self, message: dict, custom_id: str, kinds: set[int]) -> tuple[dict, dict]:
        stored = self._messages.get(str(message["id"]))
        if stored is None:
            raise LookupError(f"message {message['id']} does not exist (deleted?)")

        def walk(components: list[dict]) -> Iterator[dict]:  # rows, and Components V2 nests
            for component in components:
                yield component
                yield from walk(component.get("components", []))
                yield from walk([c for c in (component.get("accessory"),
                                             component.get("component")) if c])
        found = next((c for c in walk(stored["components"])
                      if c.get("custom_id") == custom_id and c["type"] in kinds), None)
        if found is None:
            raise LookupError(f"message {stored['id']} has no component {custom_id!r} of "
                              f"type {sorted(kinds)}")
        return stored, found

    def _interaction_payload(self, it: Interaction, data: dict, message: dict | None) -> dict:
        perms = str(self._permissions(it.user_id))
        payload = {
            "id": it.id, "application_id": str(self.app_id), "type": it.type, "data": data,
            "guild_id": str(self.guild_id),
            "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
            "channel_id": str(it.channel_id),
            "channel": copy.deepcopy(self._channels[it.channel_id]) | {"permissions": perms},
            "member": self._member_object(it.user_id) | {"permissions": perms},
            "token": it.token, "version": 1, "locale": "en-US", "guild_locale": "en-US",
            "app_permissions": str(self._permissions(self.bot_user_id)), "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)}, "context": 0,
            "attachment_size_limit": ATTACHMENT_LIMIT,
        }
        if message is not None:
            payload["message"] = copy.deepcopy(message)
        return payload
