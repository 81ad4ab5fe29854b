"""The simulated Twitch's HTTP side: the OAuth endpoints (``id.twitch.tv``) and the Helix
routes twitchio 3.3.2 uses, as a mixin of :class:`actors.twitch.simulator.SimTwitch`.

Errors are Twitch's JSON (``{"error", "status", "message"}``). A Helix call with an expired
or unknown token answers 401 ``invalid access token``: the one message (with ``invalid oauth
token``) on which twitchio refreshes the token and retries. Chat messages follow Twitch's
rules: more than 500 characters is a 400; a duplicate within 30 s, a forced drop or (when
``enforce_rate_limit``) a message over the channel's rate limit comes back 200 with
``is_sent: false`` and a ``drop_reason``.
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from actors.twitch.sim_model import APP_TOKEN_EXPIRES_IN, Subscription, Token

if TYPE_CHECKING:
    from actors.twitch.sim_eventsub import EventSub
    from actors.twitch.sim_model import PlatformState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_SUBSCRIPTIONS_PER_SESSION = 300
SUBSCRIPTION_TYPES = {("channel.chat.message", "1"): ("user:read:chat",
                                                      ("broadcaster_user_id", "user_id"))}


class Refusal(Exception):
    """An error answer in Twitch's shape."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def twitch_json(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data), content_type="application/json")


_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            409: "Conflict", 429: "Too Many Requests", 500: "Internal Server Error"}


class RestApi:
    """Routes and their handlers; the state they read is the SimTwitch's."""

    state: PlatformState
    eventsub: EventSub
    user_token_expires_in: int
    enforce_rate_limit: bool
    rate_limit: tuple[int, float]
    moderator_rate_limit: tuple[int, float]
    requests: list[tuple[str, str, int]]
    unhandled: list[tuple[str, str]]
    server_errors: list[str]
    subscription_requests: list[dict]

    def changed(self) -> None:
        raise NotImplementedError

    async def echo(self, record: dict) -> None:
        raise NotImplementedError

    def _routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", "/oauth2/token", self._token),
                ("GET", "/oauth2/validate", self._validate),
                ("GET", "/helix/users", self._users),
                ("POST", "/helix/eventsub/subscriptions", self._subscribe),
                ("GET", "/helix/eventsub/subscriptions", self._list_subscriptions),
                ("DELETE", "/helix/eventsub/subscriptions", self._unsubscribe),
                ("POST", "/helix/chat/messages", self._chat_message)]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except Refusal as refusal:
            response = twitch_json({"error": _REASONS.get(refusal.status, "Error"),
                                    "status": refusal.status, "message": refusal.message},
                                   refusal.status)
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - a simulator bug answers 500 and is listed
            self.server_errors.append(f"{request.method} {request.path}: {exc!r}")
            response = twitch_json({"error": "Internal Server Error", "status": 500,
                                    "message": str(exc)}, 500)
        if request.path != "/ws":
            self.requests.append((request.method, request.path, response.status))
        return response

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unhandled.append((request.method, request.path))
        raise Refusal(404, f"the simulator has no route {request.method} {request.path}")

    # -- id.twitch.tv ------------------------------------------------------------------------
    async def _token(self, request: web.Request) -> web.Response:
        # twitchio sends the grant in the query string; a form body is accepted too
        params = dict(request.query) | dict(await request.post())
        state = self.state
        if params.get("client_id") != state.client_id:
            raise Refusal(400, "invalid client")
        grant = params.get("grant_type")
        if grant == "client_credentials":
            if state.credentials_rejected or params.get("client_secret") != state.client_secret:
                raise Refusal(403, "invalid client secret")
            token = state.issue_app_token()
            return twitch_json({"access_token": token.access, "expires_in": APP_TOKEN_EXPIRES_IN,
                                "token_type": "bearer"})
        if grant == "refresh_token":
            if params.get("client_secret") != state.client_secret:
                raise Refusal(403, "invalid client secret")
            token = state.refresh(params.get("refresh_token", ""))
            if token is None:
                raise Refusal(400, "Invalid refresh token")
            self.changed()
            return twitch_json({"access_token": token.access, "refresh_token": token.refresh,
                                "expires_in": self.user_token_expires_in,
                                "scope": list(token.scopes), "token_type": "bearer"})
        raise Refusal(400, f"unsupported grant_type {grant!r}")

    async def _validate(self, request: web.Request) -> web.Response:
        token = self.state.authenticate(request.headers.get("Authorization"))
        if token is None:
            raise Refusal(401, "invalid access token")
        body = {"client_id": self.state.client_id, "scopes": list(token.scopes),
                "expires_in": APP_TOKEN_EXPIRES_IN}
        if token.kind == "user":
            user = self.state.users[token.user_id]
            body |= {"login": user["login"], "user_id": user["id"],
                     "expires_in": self.user_token_expires_in}
        return twitch_json(body)

    # -- Helix -------------------------------------------------------------------------------
    def _helix_token(self, request: web.Request) -> Token:
        header = request.headers.get("Authorization")
        if not header:
            raise Refusal(401, "OAuth token is missing")
        token = self.state.authenticate(header)
        if token is None:
            raise Refusal(401, "invalid access token")
        if request.headers.get("Client-Id") != self.state.client_id:
            raise Refusal(401, "Client ID and OAuth token do not match")
        return token

    async def _users(self, request: web.Request) -> web.Response:
        token = self._helix_token(request)
        keys = request.query.getall("id", []) + request.query.getall("login", [])
        if not keys and token.kind == "user":
            keys = [token.user_id]
        users = [u for key in keys if (u := self.state.user(key)) is not None]
        return twitch_json({"data": [dict(u) for u in users]})

    async def _subscribe(self, request: web.Request) -> web.Response:
        token = self._helix_token(request)
        body = await request.json()
        record = {"type": body.get("type"), "condition": body.get("condition"),
                  "session_id": (body.get("transport") or {}).get("session_id"),
                  "auth": token.kind, "status": 202}
        self.subscription_requests.append(record)
        try:
            subscription = self._new_subscription(token, body)
        except Refusal as refusal:
            record["status"] = refusal.status
            raise
        self.state.subscriptions[subscription.id] = subscription
        self.changed()
        mine = [s for s in self.state.subscriptions.values() if s.user_id == token.user_id]
        return twitch_json({"data": [self._subscription_json(subscription)],
                            "total": len(mine), "total_cost": 0, "max_total_cost": 10}, 202)

    def _new_subscription(self, token: Token, body: dict) -> Subscription:
        transport = body.get("transport") or {}
        if transport.get("method") != "websocket":
            raise Refusal(400, "the simulator serves the websocket transport only")
        if token.kind != "user":
            raise Refusal(400, "invalid transport and auth combination")
        key = (body.get("type"), body.get("version"))
        if key not in SUBSCRIPTION_TYPES:
            raise Refusal(400, f"unsupported subscription type/version {key}")
        scope, fields = SUBSCRIPTION_TYPES[key]
        condition = {k: str(v) for k, v in (body.get("condition") or {}).items()}
        if set(condition) != set(fields):
            raise Refusal(400, f"the condition needs exactly {', '.join(fields)}")
        if condition["user_id"] != token.user_id or scope not in token.scopes:
            raise Refusal(403, "subscription missing proper authorization")
        if self.state.user(condition["broadcaster_user_id"]) is None:
            raise Refusal(400, "unknown broadcaster_user_id")
        session = self.eventsub.sessions.get(transport.get("session_id", ""))
        if session is None or session.ws.closed:
            raise Refusal(400, "websocket transport session does not exist or has already "
                               "disconnected")
        if session.user_id not in (None, token.user_id):
            raise Refusal(400, "websocket transport session belongs to another user")
        enabled = [s for s in self.state.subscriptions.values()
                   if s.session_id == session.id and s.status == "enabled"]
        for existing in enabled:
            if (existing.type, existing.version, existing.condition) == (*key, condition):
                raise Refusal(409, f"subscription already exists: id={existing.id}")
        if len(enabled) >= MAX_SUBSCRIPTIONS_PER_SESSION:
            raise Refusal(429, "number of websocket transport subscriptions exceeded")
        session.user_id = token.user_id
        return Subscription(secrets.token_hex(16), key[0], key[1], condition, session.id,
                            token.user_id)

    def _subscription_json(self, subscription: Subscription) -> dict:
        session = self.eventsub.sessions.get(subscription.session_id)
        return subscription.to_json(session.connected_at if session else None)

    async def _list_subscriptions(self, request: web.Request) -> web.Response:
        token = self._helix_token(request)
        query = request.query
        found = [s for s in self.state.subscriptions.values() if s.user_id == token.user_id
                 and query.get("status", s.status) == s.status
                 and query.get("type", s.type) == s.type
                 and query.get("subscription_id", s.id) == s.id
                 and query.get("user_id", s.condition.get("user_id")) == s.condition.get(
                     "user_id")]
        return twitch_json({"data": [self._subscription_json(s) for s in found],
                            "total": len(found), "total_cost": 0, "max_total_cost": 10,
                            "pagination": {}})

    async def _unsubscribe(self, request: web.Request) -> web.Response:
        token = self._helix_token(request)
        subscription = self.state.subscriptions.get(request.query.get("id", ""))
        if subscription is None or subscription.user_id != token.user_id:
            raise Refusal(404, "subscription not found")
        del self.state.subscriptions[subscription.id]
        self.changed()
        return web.Response(status=204)

    async def _chat_message(self, request: web.Request) -> web.Response:
        token = self._helix_token(request)
        body = await request.json()
        channel, sender = str(body.get("broadcaster_id", "")), str(body.get("sender_id", ""))
        text = body.get("message")
        if self.state.user(channel) is None or self.state.user(sender) is None:
            raise Refusal(400, "unknown broadcaster_id or sender_id")
        if not isinstance(text, str) or not text.strip():
            raise Refusal(400, "Missing required parameter \"message\"")
        if len(text) > 500:
            raise Refusal(400, "The parameter \"message\" was malformed: the value must be at "
                               "most 500 characters")
        if token.kind == "user" and (token.user_id != sender
                                     or "user:write:chat" not in token.scopes):
            raise Refusal(403, "The sender must match the user ID in the access token and "
                               "the token needs the user:write:chat scope")
        if token.kind == "app" and sender != self.state.bot_id:
            raise Refusal(403, "The sender has not authorized the app with user:bot")
        limit = (self.moderator_rate_limit if self.state.is_moderator(channel, sender)
                 else self.rate_limit) if self.enforce_rate_limit else None
        record = self.state.send_message(channel, sender, text, time.monotonic(),
                                         reply_to=body.get("reply_parent_message_id"),
                                         auth=token.kind, rate_limit=limit)
        self.changed()
        if record["is_sent"]:
            await self.echo(record)
        drop = record["drop_reason"] and {"code": record["drop_reason"],
                                          "message": record["drop_message"]}
        return twitch_json({"data": [{"message_id": record["message_id"],
                                      "is_sent": record["is_sent"], "drop_reason": drop}]})
