"""The simulated Twitch platform's data: the app, users, tokens, EventSub subscriptions, the
chat rules Twitch applies to what a bot sends, and the JSON objects Twitch sends. No I/O:
:class:`actors.twitch.simulator.SimTwitch` serves and dispatches them.

    >>> state = PlatformState()
    >>> token = state.issue_user_token(BOT_ID)
    >>> state.authenticate(f"Bearer {token.access}").user_id == BOT_ID
    True
    >>> state.send_message(OWNER_ID, BOT_ID, "hi", now=0.0)["is_sent"]
    True
    >>> state.send_message(OWNER_ID, BOT_ID, "hi", now=1.0)["drop_reason"]
    'msg_duplicate'
"""
from __future__ import annotations

import datetime
import itertools
import re
import secrets
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

CLIENT_ID = "sim-client-id"
CLIENT_SECRET = "sim-client-secret"
BOT_ID, BOT_LOGIN = "100001", "swarmbot"
OWNER_ID, OWNER_LOGIN = "100002", "streamer"
BOT_SCOPES = ("user:read:chat", "user:write:chat", "user:bot", "moderator:read:followers")
APP_TOKEN_EXPIRES_IN = 5_000_000
DUPLICATE_WINDOW_S = 30.0
DROP_MESSAGES = {
    "msg_duplicate": "Your message is identical to the one you sent less than 30 seconds ago.",
    "msg_ratelimit": "Your message was not sent because you are sending messages too quickly.",
    "msg_banned": "You are permanently banned from talking in this channel.",
    "msg_channel_suspended": "This channel does not exist or has been suspended.",
}
_MENTION = re.compile(r"@(\w+)")


def now_rfc3339() -> str:
    """UTC now as Twitch writes it (``...Z``; Python 3.11 parses at most microseconds)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_message_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Token:
    access: str
    kind: str                       # "app" | "user"
    user_id: str | None
    scopes: tuple[str, ...]
    refresh: str | None = None
    valid: bool = True              # False once expired or revoked


@dataclass
class Subscription:
    id: str
    type: str
    version: str
    condition: dict[str, str]
    session_id: str
    user_id: str                    # whose user token created it
    created_at: str = field(default_factory=now_rfc3339)
    status: str = "enabled"         # or websocket_disconnected, ...

    def to_json(self, connected_at: str | None = None) -> dict:
        transport = {"method": "websocket", "session_id": self.session_id}
        if connected_at:
            transport["connected_at"] = connected_at
        else:
            transport["disconnected_at"] = now_rfc3339()
        return {"id": self.id, "status": self.status, "type": self.type,
                "version": self.version, "condition": dict(self.condition),
                "created_at": self.created_at, "transport": transport, "cost": 0}


class PlatformState:
    """The app (``client_id``/``client_secret``), the bot and the broadcaster, every user a
    test adds, the tokens issued, the subscriptions made and the chat messages the bot sent.
    """

    def __init__(self, *, client_id: str = CLIENT_ID, client_secret: str = CLIENT_SECRET,
                 bot_id: str = BOT_ID, bot_login: str = BOT_LOGIN, owner_id: str = OWNER_ID,
                 owner_login: str = OWNER_LOGIN):
        self.client_id, self.client_secret = client_id, client_secret
        self.bot_id, self.owner_id = bot_id, owner_id
        self.users: dict[str, dict] = {}
        self.logins: dict[str, str] = {}
        self.tokens: dict[str, Token] = {}
        self.refresh_tokens: dict[str, Token] = {}   # refresh token -> the latest access
        self.subscriptions: dict[str, Subscription] = {}
        self.moderators: dict[str, set[str]] = {}     # channel id -> moderator ids
        self.credentials_rejected = False
        self.forced_drops: deque[tuple[str, str]] = deque()  # (code, message) for next sends
        self.sent: list[dict] = []         # every chat message the bot tried to send
        self.refreshes: list[dict] = []    # every refresh_token grant that succeeded
        self._ids = itertools.count(200001)
        self.add_user(bot_login, bot_id)
        self.add_user(owner_login, owner_id)

    # -- users -------------------------------------------------------------------------------
    def add_user(self, login: str, user_id: str | None = None,
                 display_name: str | None = None) -> dict:
        login = login.lower()
        if login in self.logins and user_id in (None, self.logins[login]):
            return self.users[self.logins[login]]
        user_id = str(user_id) if user_id is not None else str(next(self._ids))
        self.users[user_id] = {
            "id": user_id, "login": login, "display_name": display_name or login,
            "type": "", "broadcaster_type": "", "description": "",
            "profile_image_url": f"https://static-cdn.example/{login}.png",
            "offline_image_url": "", "view_count": 0, "created_at": "2020-01-01T00:00:00Z"}
        self.logins[login] = user_id
        return self.users[user_id]

    def user(self, id_or_login: str) -> dict | None:
        key = str(id_or_login)
        return self.users.get(key) or self.users.get(self.logins.get(key.lower(), ""))

    def is_moderator(self, channel_id: str, user_id: str) -> bool:
        return user_id == channel_id or user_id in self.moderators.get(channel_id, set())

    # -- tokens ------------------------------------------------------------------------------
    def issue_app_token(self) -> Token:
        token = Token(secrets.token_hex(15), "app", None, ())
        self.tokens[token.access] = token
        return token

    def issue_user_token(self, user_id: str, scopes: tuple[str, ...] = BOT_SCOPES,
                         refresh: str | None = None) -> Token:
        """A user access token (and refresh token) as the OAuth authorization flow gives."""
        token = Token(secrets.token_hex(15), "user", str(user_id), tuple(scopes),
                      refresh or secrets.token_hex(25))
        self.tokens[token.access] = token
        self.refresh_tokens[token.refresh] = token
        return token

    def refresh(self, refresh: str) -> Token | None:
        """The refresh_token grant: a new access token for the same user and scopes (the
        old access token stops working), or None if the refresh token is not valid."""
        old = self.refresh_tokens.get(refresh)
        if old is None or self.credentials_rejected:
            return None
        old.valid = False
        token = self.issue_user_token(old.user_id, old.scopes, refresh)
        self.refreshes.append({"user_id": old.user_id, "token": token.access})
        return token

    def expire_user_tokens(self, user_id: str) -> int:
        """Every access token of ``user_id`` stops working; its refresh tokens still work."""
        expired = [t for t in self.tokens.values() if t.user_id == user_id and t.valid]
        for token in expired:
            token.valid = False
        return len(expired)

    def revoke_user(self, user_id: str) -> int:
        """The user disconnected the app: access and refresh tokens stop working."""
        count = self.expire_user_tokens(user_id)
        for refresh in [r for r, t in self.refresh_tokens.items() if t.user_id == user_id]:
            del self.refresh_tokens[refresh]
        return count

    def expire_app_tokens(self) -> int:
        expired = [t for t in self.tokens.values() if t.kind == "app" and t.valid]
        for token in expired:
            token.valid = False
        return len(expired)

    def authenticate(self, header: str | None) -> Token | None:
        """The valid token in an ``Authorization`` header (``Bearer`` or ``OAuth``), or None."""
        scheme, _, access = (header or "").strip().partition(" ")
        if scheme.lower() not in ("bearer", "oauth") or self.credentials_rejected:
            return None
        token = self.tokens.get(access.strip())
        return token if token is not None and token.valid else None

    # -- chat --------------------------------------------------------------------------------
    def send_message(self, channel_id: str, sender_id: str, text: str, now: float, *,
                     reply_to: str | None = None, auth: str = "user",
                     rate_limit: tuple[int, float] | None = None) -> dict:
        """Judge and record a chat message the bot sends (``now``: monotonic seconds);
        the record: message_id, channel, sender_id, text, reply_to, auth (which kind of
        token sent it), at, is_sent, drop_reason (a code or None), drop_message."""
        drop = self.judge_message(channel_id, sender_id, text, now, rate_limit)
        record = {"message_id": new_message_id() if drop is None else "",
                  "channel": channel_id, "sender_id": sender_id, "text": text,
                  "reply_to": reply_to, "auth": auth, "at": now, "is_sent": drop is None,
                  "drop_reason": drop and drop["code"], "drop_message": drop and drop["message"]}
        self.sent.append(record)
        return record

    def judge_message(self, channel_id: str, sender_id: str, text: str, now: float,
                      rate_limit: tuple[int, float] | None = None) -> dict | None:
        """Twitch's drop_reason for a message the bot sends, or None if it goes out. A
        message identical (spacing aside) to one it sent in the channel less than 30 s ago
        is a duplicate; over ``rate_limit`` (messages, seconds) is msg_ratelimit."""
        if self.forced_drops:
            code, message = self.forced_drops.popleft()
            return {"code": code, "message": message}
        line = " ".join(text.split())
        accepted = [m for m in self.sent if m["is_sent"] and m["channel"] == channel_id
                    and m["sender_id"] == sender_id]
        if any(now - m["at"] < DUPLICATE_WINDOW_S and " ".join(m["text"].split()) == line
               for m in accepted):
            return {"code": "msg_duplicate", "message": DROP_MESSAGES["msg_duplicate"]}
        if rate_limit is not None:
            limit, window_s = rate_limit
            if sum(now - m["at"] < window_s for m in accepted) >= limit:
                return {"code": "msg_ratelimit", "message": DROP_MESSAGES["msg_ratelimit"]}
        return None

    def max_sent_in_window(self, channel_id: str, window_s: float = 30.0) -> int:
        """The most messages the platform accepted from the bot in ``channel_id`` within
        any ``window_s`` window (what Twitch's rate limit counts)."""
        times = [m["at"] for m in self.sent if m["is_sent"] and m["channel"] == channel_id]
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def chat_event(self, channel_id: str, chatter_id: str, text: str, badges: Any,
                   message_id: str, reply_to: dict | None = None,
                   shared_from: str | None = None) -> dict:
        """A ``channel.chat.message`` event with every field twitchio 3.3.2 reads.
        ``badges``: set ids (``"moderator"``) or badge dicts; ``reply_to``: the parent's
        event; ``shared_from``: a shared-chat partner channel the message came from."""
        channel, chatter = self.users[channel_id], self.users[chatter_id]
        source = self.users[shared_from] if shared_from else None
        badge_objects = [b if isinstance(b, dict) else {
            "set_id": b, "id": "12" if b in ("subscriber", "founder") else "1",
            "info": "12" if b in ("subscriber", "founder") else ""} for b in badges]
        return {
            "broadcaster_user_id": channel["id"], "broadcaster_user_login": channel["login"],
            "broadcaster_user_name": channel["display_name"],
            "chatter_user_id": chatter["id"], "chatter_user_login": chatter["login"],
            "chatter_user_name": chatter["display_name"],
            "message_id": message_id,
            "message": {"text": text, "fragments": self._fragments(text)},
            "color": "#1E90FF", "badges": badge_objects, "message_type": "text",
            "cheer": None, "reply": self._reply(reply_to) if reply_to else None,
            "channel_points_custom_reward_id": None, "channel_points_animation_id": None,
            "source_broadcaster_user_id": source["id"] if source else None,
            "source_broadcaster_user_login": source["login"] if source else None,
            "source_broadcaster_user_name": source["display_name"] if source else None,
            "source_message_id": new_message_id() if source else None,
            "source_badges": badge_objects if source else None,
            "is_source_only": None,
        }

    def _fragments(self, text: str) -> list[dict]:
        """Text and mention fragments, as Twitch splits a message (emotes are not known)."""
        fragments, at = [], 0
        for match in _MENTION.finditer(text):
            user = self.user(match.group(1))
            if user is None:
                continue
            if match.start() > at:
                fragments.append(_fragment("text", text[at:match.start()]))
            fragments.append(_fragment("mention", match.group(0), mention={
                "user_id": user["id"], "user_login": user["login"],
                "user_name": user["display_name"]}))
            at = match.end()
        if at < len(text) or not fragments:
            fragments.append(_fragment("text", text[at:]))
        return fragments

    @staticmethod
    def _reply(parent: dict) -> dict:
        return {"parent_message_id": parent["message_id"],
                "parent_message_body": parent["message"]["text"],
                "parent_user_id": parent["chatter_user_id"],
                "parent_user_login": parent["chatter_user_login"],
                "parent_user_name": parent["chatter_user_name"],
                "thread_message_id": parent["message_id"],
                "thread_user_id": parent["chatter_user_id"],
                "thread_user_login": parent["chatter_user_login"],
                "thread_user_name": parent["chatter_user_name"]}


def _fragment(kind: str, text: str, **extra: Any) -> dict:
    return {"type": kind, "text": text, "cheermote": None, "emote": None, "mention": None,
            **extra}
