"""The REST half of the simulated Discord platform (API v10 as discord.py 2.7.1 calls it):
login, channels and messages with Discord's per-channel rate limit, application commands,
interaction callbacks, follow-ups and their messages. :class:`RestApi` is a mixin of
:class:`actors.discord.simulator.SimDiscord`: its handlers read the GuildState data, knobs
(``token``, ``rate_limit``, ``response_deadline_s``, ...) and write the records
(``requests``, ``syncs``, ``responses``, ...) of that object, and store messages through its
``_post`` / ``_edit`` / ``_delete``, which dispatch the gateway events.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from typing import Any

from aiohttp import web

from actors.discord.sim_model import EPHEMERAL, LOADING, Interaction

log = logging.getLogger(__name__)
API = "/api/v10"
INTERACTION_TOKEN_LIFETIME_S = 15 * 60
# Which responses each interaction type accepts (Discord's "interaction response types").
CALLBACKS = {2: {4, 5, 9}, 3: {4, 5, 6, 7, 9}, 5: {4, 5, 6, 7}}


def _json(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # exactly "application/json": with "; charset=utf-8" discord.py reads the body as text
    return web.Response(body=json.dumps(data).encode(), status=status, headers=headers,
                        content_type="application/json")


class _Refused(Exception):
    """A Discord error answer: status, JSON error code and message."""

    def __init__(self, status: int, code: int, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class RestApi:
    """The REST routes (see the module docstring for what they use of the platform)."""

    def _routes(self) -> list[tuple[str, str, Callable]]:
        return [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway", self._gateway_info),
            ("GET", "/gateway/bot", self._gateway_info),
            ("GET", "/guilds/{gid}", self._guild),
            ("GET", "/guilds/{gid}/members/{uid}", self._guild_member),
            ("GET", "/channels/{cid}", self._channel),
            ("POST", "/channels/{cid}/typing", self._typing),
            ("GET", "/channels/{cid}/messages", self._channel_history),
            ("POST", "/channels/{cid}/messages", self._create_message),
            ("GET", "/channels/{cid}/messages/{mid}", self._channel_message),
            ("PATCH", "/channels/{cid}/messages/{mid}", self._channel_message),
            ("DELETE", "/channels/{cid}/messages/{mid}", self._channel_message),
            ("GET", "/applications/{app}/commands", self._app_commands),
            ("PUT", "/applications/{app}/commands", self._app_commands),
            ("GET", "/applications/{app}/guilds/{gid}/commands", self._app_commands),
            ("PUT", "/applications/{app}/guilds/{gid}/commands", self._app_commands),
            ("POST", "/interactions/{iid}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("GET", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message),
            ("PATCH", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{mid}", self._webhook_message),
        ]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        path = request.path
        # Interaction callbacks and webhooks authenticate by their token, not the bot's.
        needs_auth = path.startswith(API) and not path.startswith(
            (API + "/interactions/", API + "/webhooks/"))
        try:
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise _Refused(401, 0, "401: Unauthorized")
            response = await handler(request)
        except _Refused as exc:
            response = _json({"message": exc.message, "code": exc.code}, exc.status)
        except (web.HTTPException, ConnectionError):  # aiohttp's own answers; a client gone
            raise
        except Exception:  # a simulator bug: answer 500 (discord.py retries it) and record it
            self.server_errors.append(traceback.format_exc())
            log.exception("simulated Discord failed on %s %s", request.method, path)
            response = _json({"message": "500: Internal Server Error", "code": 0}, 500)
        if path.startswith(API):
            self.requests.append((request.method, path.removeprefix(API), response.status))
            self._changed()
        return response

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unhandled.append((request.method, request.path))
        raise _Refused(404, 0, "404: Not Found")

    @staticmethod
    async def _body(request: web.Request) -> tuple[dict, list[dict]]:
        """The JSON payload and uploaded files (multipart: payload_json + files[n])."""
        if not request.content_type.startswith("multipart/"):
            text = await request.text()
            return (json.loads(text) if text else {}), []
        payload, files = {}, []
        async for part in await request.multipart():
            if part.name == "payload_json":
                payload = json.loads(await part.text())
            elif part.filename:
                files.append({"filename": part.filename, "size": len(await part.read())})
        return payload, files

    def _attachments(self, files: list[dict]) -> list[dict]:
        out = []
        for f in files:
            aid = self._snowflake()
            url = f"{self.api_base}/attachments/{aid}/{f['filename']}"
            out.append({"id": str(aid), "filename": f["filename"], "size": f["size"],
                        "url": url, "proxy_url": url})
        return out

    def _guild_id_of(self, request: web.Request) -> None:
        if int(request.match_info["gid"]) != self.guild_id:
            raise _Refused(403, 50001, "Missing Access")

    def _channel_of(self, request: web.Request) -> int:
        channel_id = int(request.match_info["cid"])
        if self._channel_object(channel_id) is None:
            raise _Refused(404, 10003, "Unknown Channel")
        return channel_id

    async def _me(self, request: web.Request) -> web.Response:
        return _json(self._user_object(self.bot_user_id) | {"verified": True,
                                                            "mfa_enabled": False})

    async def _application(self, request: web.Request) -> web.Response:
        return _json({
            "id": str(self.app_id), "name": self._users[self.bot_user_id]["username"],
            "description": "", "icon": None, "bot_public": True,
            "bot_require_code_grant": False, "owner": self._user_object(self.bot_user_id)
            | {"id": str(self.owner_id), "username": "owner", "bot": False},
            "verify_key": "0" * 64, "flags": self._app_flags(), "team": None, "summary": "",
            "bot": self._user_object(self.bot_user_id)})

    async def _gateway_info(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}})

    async def _guild(self, request: web.Request) -> web.Response:
        self._guild_id_of(request)
        guild = self._guild_object(0)
        for key in ("channels", "members", "voice_states", "presences", "threads",
                    "joined_at", "large", "member_count", "unavailable"):
            guild.pop(key)
        return _json(guild)

    async def _guild_member(self, request: web.Request) -> web.Response:
        self._guild_id_of(request)
        user_id = int(request.match_info["uid"])
        if user_id not in self._members:
            raise _Refused(404, 10007, "Unknown Member")
        return _json(self._member_object(user_id))

    async def _channel(self, request: web.Request) -> web.Response:
        return _json(self._channel_object(self._channel_of(request)))

    async def _typing(self, request: web.Request) -> web.Response:
        self._channel_of(request)
        return web.Response(status=204)

    async def _channel_history(self, request: web.Request) -> web.Response:
        ids = self._history[self._channel_of(request)]
        limit = min(int(request.query.get("limit", 50)), 100)
        before = int(request.query.get("before", 0)) or None
        newest_first = [self._messages[m] for m in reversed(ids)
                        if before is None or int(m) < before]
        return _json(newest_first[:limit])

    def _take_rate_limit(self, channel_id: int) -> tuple[bool, dict]:
        """Discord's fixed window per channel: it opens with the first post and resets
        ``per`` seconds later. Returns (allowed, headers)."""
        limit, per = self.rate_limit
        now = time.monotonic()
        bucket = self._buckets.setdefault(channel_id, [now, 0])
        if now >= bucket[0] + per:
            bucket[:] = [now, 0]
        reset_after = math.ceil((bucket[0] + per - now) * 1000) / 1000
        allowed = bucket[1] < limit
        bucket[1] += allowed
        headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(limit - bucket[1]),
                   "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
                   "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                   "X-RateLimit-Bucket": "sim-channel-messages"}
        if not self.rate_limit_headers and allowed:
            headers = {}
        return allowed, headers

    async def _create_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel_of(request)
        allowed, headers = self._take_rate_limit(channel_id)
        if not allowed:
            self.rate_limited += 1
            retry_after = float(headers["X-RateLimit-Reset-After"])
            # Via marks it as Discord's own 429: without it discord.py assumes a Cloudflare ban
            headers |= {"Retry-After": str(math.ceil(retry_after)), "Via": "1.1 google",
                        "X-RateLimit-Scope": "user"}
            return _json({"message": "You are being rate limited.", "retry_after": retry_after,
                          "global": False}, 429, headers)
        payload, files = await self._body(request)
        content = payload.get("content") or ""
        if not (content or payload.get("embeds") or payload.get("components")
                or payload.get("sticker_ids") or files):
            raise _Refused(400, 50006, "Cannot send an empty message")
        if len(content) > 2000:
            raise _Refused(400, 50035, "Invalid Form Body (content: Must be 2000 or fewer "
                                       "in length.)")
        message = self._new_message(channel_id, self.bot_user_id, payload,
                                    self._attachments(files))
        reference = payload.get("message_reference")
        if reference:
            referenced = self._messages.get(str(reference.get("message_id")))
            if referenced is not None:
                reference = {"type": 0, "message_id": referenced["id"],
                             "channel_id": referenced["channel_id"]}
                if channel_id in self._channels:  # not in a DM
                    reference["guild_id"] = str(self.guild_id)
                message.update(type=19, referenced_message=copy.deepcopy(referenced),
                               message_reference=reference)
            elif reference.get("fail_if_not_exists", True):
                raise _Refused(400, 50035, "Invalid Form Body (message_reference: Unknown "
                                           "message)")
        await self._post(message)
        return _json(message, headers=headers)

    async def _channel_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel_of(request)
        message = self._messages.get(request.match_info["mid"])
        if message is None or int(message["channel_id"]) != channel_id:
            raise _Refused(404, 10008, "Unknown Message")
        if request.method == "DELETE":
            await self._delete(message)
            return web.Response(status=204)
        if request.method == "PATCH":
            if message["author"]["id"] != str(self.bot_user_id):
                raise _Refused(403, 50005, "Cannot edit a message authored by another user")
            payload, files = await self._body(request)
            await self._edit(message, payload, self._attachments(files) if files else None)
        return _json(message)

    async def _app_commands(self, request: web.Request) -> web.Response:
        if int(request.match_info["app"]) != self.app_id:
            raise _Refused(403, 50001, "Missing Access")
        scope = None
        if "gid" in request.match_info:
            self._guild_id_of(request)
            scope = self.guild_id
        if request.method == "GET":
            return _json(self._commands.get(scope, []))
        # A bulk overwrite: a command that stays (same name and type) keeps its id.
        old = {(c["name"], c.get("type", 1)): c["id"] for c in self._commands.get(scope, [])}
        commands = []
        for command in (await self._body(request))[0]:
            key = (command["name"], command.get("type", 1))
            stored = command | {"id": old.get(key) or str(self._snowflake()),
                                "application_id": str(self.app_id), "type": key[1],
                                "version": str(self._snowflake()),
                                "default_member_permissions": command.get(
                                    "default_member_permissions")}
            if scope is not None:
                stored["guild_id"] = str(scope)
            commands.append(stored)
        self._commands[scope] = commands
        self.syncs.append({"at": time.monotonic(), "scope": "guild" if scope else "global",
                           "guild_id": scope, "names": [c["name"] for c in commands],
                           "readies_before": self.ready_count})
        self._changed()
        return _json(commands)

    # -- interaction responses -------------------------------------------------------------
    def _refuse_response(self, it_id: str | None, kind: str, status: int, code: int,
                         message: str) -> _Refused:
        self.interaction_errors.append({"interaction_id": it_id, "kind": kind,
                                        "status": status, "code": code, "message": message,
                                        "at": time.monotonic()})
        self._changed()
        return _Refused(status, code, message)

    def _record(self, it: Interaction, kind: str, rtype: int | None, data: dict,
                message: dict | None) -> None:
        ephemeral = bool(message["flags"] & EPHEMERAL) if message else bool(
            (data.get("flags") or 0) & EPHEMERAL)
        now = time.monotonic()
        self.responses.append({
            "interaction_id": it.id, "kind": kind, "type": rtype,
            "content": data.get("content"), "embeds": data.get("embeds"),
            "components": data.get("components"), "ephemeral": ephemeral,
            "modal": copy.deepcopy(data) if rtype == 9 else None,
            "message": copy.deepcopy(message), "at": now, "elapsed": now - it.created})
        self._changed()

    async def _response_message(self, it: Interaction, payload: dict, files: list[dict],
                                flags: int = 0) -> dict:
        message = self._new_message(it.channel_id, self.bot_user_id, payload,
                                    self._attachments(files), flags)
        message.update(webhook_id=str(self.app_id), application_id=str(self.app_id),
                       type=20 if it.type == 2 else 0,
                       interaction_metadata={"id": it.id, "type": it.type,
                                             "user": self._user_object(it.user_id),
                                             "authorizing_integration_owners": {
                                                 "0": str(self.guild_id)}})
        if message["flags"] & EPHEMERAL:
            self._messages[message["id"]] = message  # exists for its user only: no dispatch
            self._changed()
        else:
            await self._post(message)
        return message

    async def _callback(self, request: web.Request) -> web.Response:
        it = self._interactions.get(request.match_info["iid"])
        if it is None or it.token != request.match_info["token"]:
            raise self._refuse_response(None, "callback", 404, 10062, "Unknown interaction")
        body, files = await self._body(request)
        if it.response_type is not None:
            raise self._refuse_response(it.id, "callback", 400, 40060,
                                        "Interaction has already been acknowledged.")
        if time.monotonic() - it.created > self.response_deadline_s:
            raise self._refuse_response(it.id, "callback", 404, 10062, "Unknown interaction")
        rtype, data = body.get("type"), body.get("data") or {}
        if rtype not in CALLBACKS[it.type] or (rtype in (6, 7) and it.message_id is None):
            raise self._refuse_response(it.id, "callback", 400, 50035,
                                        f"Invalid Form Body (type {rtype} cannot answer an "
                                        f"interaction of type {it.type})")
        it.response_type = rtype
        message = None
        if rtype == 4:
            message = await self._response_message(it, data, files)
            it.original_id = message["id"]
        elif rtype == 5:  # "thinking": a placeholder the first follow-up or edit fills
            flags = LOADING | ((data.get("flags") or 0) & EPHEMERAL)
            message = await self._response_message(it, {}, [], flags)
            it.original_id = message["id"]
        elif rtype == 7:
            message = await self._edit(self._messages[it.message_id], data,
                                       self._attachments(files) if files else None)
        elif rtype == 9:
            it.modal = copy.deepcopy(data)
        self._record(it, "callback", rtype, data, message)
        if request.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        answered = message["id"] if message else it.message_id if rtype == 6 else None
        result = {"interaction": {
            "id": it.id, "type": it.type, "response_message_id": answered,
            "response_message_loading": rtype == 5,
            "response_message_ephemeral": bool(message and message["flags"] & EPHEMERAL)},
            "resource": {"type": rtype}}
        if message is not None:
            result["resource"]["message"] = message
        return _json(result)

    def _webhook_interaction(self, request: web.Request, kind: str) -> Interaction:
        it = self._by_token.get(request.match_info["token"])
        if int(request.match_info["app"]) != self.app_id or it is None:
            raise self._refuse_response(None, kind, 404, 10015, "Unknown Webhook")
        if time.monotonic() - it.created > INTERACTION_TOKEN_LIFETIME_S:
            raise self._refuse_response(it.id, kind, 401, 50027, "Invalid Webhook Token")
        if it.response_type is None:  # no follow-up before the first response
            raise self._refuse_response(it.id, kind, 404, 10015, "Unknown Webhook")
        return it

    def _loading_original(self, it: Interaction) -> dict | None:
        original = self._messages.get(it.original_id) if it.original_id else None
        return original if original and original["flags"] & LOADING else None

    async def _complete(self, original: dict, payload: dict, files: list[dict]) -> dict:
        original["flags"] &= ~LOADING
        return await self._edit(original, payload, self._attachments(files) if files else None)

    async def _followup(self, request: web.Request) -> web.Response:
        it = self._webhook_interaction(request, "followup")
        payload, files = await self._body(request)
        original = self._loading_original(it)
        if original is not None:  # the first follow-up after a defer fills the placeholder
            message = await self._complete(original, payload, files)
        else:
            message = await self._response_message(it, payload, files)
            it.followup_ids.append(message["id"])
        self._record(it, "followup", None, payload, message)
        if request.query.get("wait") in ("1", "true", "True"):
            return _json(message)
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        kind = {"GET": "get", "PATCH": "edit", "DELETE": "delete"}[request.method]
        it = self._webhook_interaction(request, kind)
        mid = request.match_info["mid"]
        if mid == "@original":  # a type 6/7 response's original is the component's message
            mid = it.original_id or (it.message_id if it.response_type in (6, 7) else None)
        elif mid != it.original_id and mid not in it.followup_ids:
            mid = None
        message = self._messages.get(mid) if mid else None
        if message is None:
            raise self._refuse_response(it.id, kind, 404, 10008, "Unknown Message")
        if request.method == "GET":
            return _json(message)
        if request.method == "DELETE":
            await self._delete(message)
            self._record(it, "delete", None, {}, None)
            return web.Response(status=204)
        payload, files = await self._body(request)
        if message["flags"] & LOADING:
            message = await self._complete(message, payload, files)
        else:
            message = await self._edit(message, payload,
                                       self._attachments(files) if files else None)
        self._record(it, "edit", None, payload, message)
        return _json(message)
