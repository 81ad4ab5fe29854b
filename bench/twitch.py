"""Twitch command -> reply latency through the swarm, against a bare twitchio bot on the same
simulated platform in the same run; chat interpretation throughput against a plain keyword
router; the output limiter's accuracy under a raid.

Swarm: a viewer types ``!status`` (twitch service -> admin -> registry -> back, one line) or
``!ask ...`` (interpretation picks the agent -> admin -> queue commit -> back), or a moderator
``!agent Agent-1 ...`` (the same without interpretation) in the simulated Twitch
(``actors/twitch/simulator.py``); the time runs from the chat notification being sent on the
EventSub socket to the reply reaching ``POST /helix/chat/messages``.
Peer, same run: a bare twitchio ``commands.Bot`` in this process answering ``!ping`` with
``send_message`` and the bot's user token (the same call the service makes), no swarm, no
limiter. Requests alternate between the cases, one at a time; each from a new login so that
no reply is a duplicate. Interpretation: lines per second of ``interpret`` (spam rules,
mentions, questions, keyword routing) vs a router that only lower-cases, splits and looks
words up in a dict (what the replaced bot did). Limiter: 20,000 offers in 600 virtual seconds
at four priorities: the most messages in any 30 s window (must be <= 20) and every offer
accounted for (sent, queued or counted as dropped).

    python -m bench.twitch [--json] [--quick]
"""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time

from twitchio import eventsub
from twitchio.ext import commands

from actors.twitch.interpret import InterpretConfig, interpret
from actors.twitch.levels import Level
from actors.twitch.limiter import OutputLimiter, Priority
from actors.twitch.simulator import (
    BOT_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    OWNER_ID,
    SimTwitchThread,
    redirect_twitchio,
)
from bench.common import BenchSwarm, emit, median_ms, p95_ms, parser

TARGET_RATIO = 2.0
KEYWORDS = {"Agent-1": ["build", "ci", "pipeline"], "Agent-2": ["docs", "readme"],
            "Agent-3": ["test suite", "flaky"], "Agent-4": ["deploy", "release"]}


def _bare_bot(sim: SimTwitchThread, stop: threading.Event) -> threading.Thread:
    """The peer: a plain twitchio bot with one command, on its own loop and thread."""
    class Ping(commands.Component):
        @commands.command()
        async def ping(self, ctx: commands.Context) -> None:
            await ctx.broadcaster.send_message(f"@{ctx.chatter.name} pong", sender=BOT_ID,
                                               token_for=BOT_ID)

    class Bot(commands.Bot):
        async def event_command_error(self, payload: commands.CommandErrorPayload) -> None:
            pass  # the swarm's commands are not the peer's

        async def setup_hook(self) -> None:
            await self.add_token(sim.bot_token, sim.bot_refresh)
            await self.subscribe_websocket(eventsub.ChatMessageSubscription(
                broadcaster_user_id=OWNER_ID, user_id=BOT_ID))
            await self.add_component(Ping())

    async def main() -> None:
        with redirect_twitchio(sim.api_base, sim.ws_url):
            bot = Bot(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, bot_id=BOT_ID,
                      owner_id=OWNER_ID, prefix="!")
            task = asyncio.create_task(bot.start(with_adapter=False, load_tokens=False,
                                                 save_tokens=False))
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await bot.close()
            await asyncio.gather(task, return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    return thread


def _timed(sim: SimTwitchThread, login: str, text: str, badges: list[str]) -> float:
    since = len(sim.sim.sent)
    t0 = time.perf_counter()
    sim.chat(login, text, badges=badges)
    sim.wait_sent(lambda m: m["text"].startswith(f"@{login} "), 30, since)
    return time.perf_counter() - t0


def latency(n: int) -> dict:
    with SimTwitchThread(keepalive_every_s=5.0) as sim:
        os.environ.update(BENCH_TWITCH_SECRET=CLIENT_SECRET, BENCH_TWITCH_TOKEN=sim.bot_token,
                          BENCH_TWITCH_REFRESH=sim.bot_refresh)
        stop = threading.Event()
        peer = _bare_bot(sim, stop)
        sim.wait_subscribed(timeout=10)
        block = {"enabled": True, "client_id": CLIENT_ID,
                 "client_secret": "${env:BENCH_TWITCH_SECRET}", "bot_id": BOT_ID,
                 "bot_token": "${env:BENCH_TWITCH_TOKEN}",
                 "bot_refresh_token": "${env:BENCH_TWITCH_REFRESH}", "channels": ["streamer"],
                 "api_base": sim.api_base, "id_base": sim.api_base, "eventsub_url": sim.ws_url,
                 "cooldowns": {"status": {"global_s": 0}, "ask": {"global_s": 0, "user_s": 0}},
                 "interpretation": {"default_agent": "Agent-1"},
                 "limits": {"limit": 100_000, "window_s": 1.0, "moderator_limit": 100_000}}
        with BenchSwarm({"services": {"twitch": block, "queue": {"enabled": True}},
                         "agents": {"names": ["Agent-1"]}}) as swarm:
            swarm.start()
            sim.wait_subscribed(timeout=20, count=2)
            cases = {"peer_ping": ("!ping", []), "status": ("!status", []),
                     "ask": ("!ask why is the build red?", ["subscriber"]),
                     "agent": ("!agent Agent-1 bench", ["moderator"])}
            for name, (text, badges) in cases.items():  # warm-up: connections, caches
                _timed(sim, f"warm{name}", text, badges)
            times: dict[str, list[float]] = {name: [] for name in cases}
            names = list(cases)
            for i in range(n):
                for name in names[i % len(names):] + names[:i % len(names)]:
                    text, badges = cases[name]
                    times[name].append(_timed(sim, f"u{i}{name[0]}", text, badges))
        stop.set()
        peer.join(10)
    r: dict = {"n": n, "target_ratio_p95": TARGET_RATIO}
    for name, xs in times.items():
        r[f"{name}_median_ms"], r[f"{name}_p95_ms"] = median_ms(xs), p95_ms(xs)
    for name in ("status", "ask", "agent"):
        r[f"{name}_ratio_p95"] = round(r[f"{name}_p95_ms"] / r["peer_ping_p95_ms"], 2)
    return r


def _corpus(n: int, rng: random.Random) -> list[str]:
    words = ["the", "a", "is", "build", "docs", "ci", "red", "green", "why", "how", "lol",
             "pog", "hype", "deploy", "release", "agent", "test", "suite", "flaky", "readme",
             "pipeline", "hello", "chat", "stream", "nice", "wow"]
    lines = []
    for i in range(n):
        k = rng.random()
        line = " ".join(rng.choice(words) for _ in range(rng.randint(2, 14)))
        if k < 0.1:
            line = f"Agent-{rng.randint(1, 4)}: {line}"
        elif k < 0.3:
            line += "?"
        elif k < 0.35:
            line = line.upper() + " CHECK bit.ly/x"
        elif k < 0.4:
            line = "!status"
        lines.append(line)
    return lines


def interpretation(n: int) -> dict:
    rng = random.Random(7)
    lines = _corpus(n, rng)
    config = InterpretConfig.from_config({"keywords": KEYWORDS, "default_agent": "Agent-1"})
    agents = list(KEYWORDS)
    table = {w: agent for agent, ws in KEYWORDS.items() for k in ws for w in k.split()}

    def naive(line: str) -> str | None:
        for word in line.lower().split():
            if word in table:
                return table[word]
        return None

    t0 = time.perf_counter()
    kinds: dict[str, int] = {}
    for line in lines:
        kind = interpret(line, Level.SUBSCRIBER, config, agents).kind
        kinds[kind] = kinds.get(kind, 0) + 1
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    for line in lines:
        naive(line)
    peer = time.perf_counter() - t0
    return {"lines": n, "interpret_lines_per_s": round(n / ours),
            "naive_router_lines_per_s": round(n / peer),
            "interpret_cost_ratio": round(ours / peer, 1), "kinds": kinds}


def limiter_accuracy() -> dict:
    """A raid's worth of output: 1 % confirmations, 70 % answers, 9 % notices, 20 % timer
    posts, 20,000 in 600 s (33 per second against 20 per 30 s)."""
    rng = random.Random(3)
    limiter = OutputLimiter(limit=20, window_s=30.0, margin_s=1.0)
    sends: list[float] = []
    now = 0.0
    mix = [Priority.CONFIRM] + [Priority.ANSWER] * 70 + [Priority.NOTICE] * 9 + [
        Priority.PERIODIC] * 20
    for i in range(20_000):
        now += rng.expovariate(20_000 / 600)
        limiter.offer("c", f"line {i}", rng.choice(mix), now)
        sends += [now for _ in limiter.due(now)]
    while (wait := limiter.next_due_in(now)) is not None:  # the raid is over: drain
        now += wait
        sends += [now for _ in limiter.due(now)]
    worst = max(sum(1 for t in sends[i:] if t < at + 30.0) for i, at in enumerate(sends))
    stats = limiter.stats()
    return {"offers": stats["offered"], "sent": stats["sent"],
            "dropped": stats["dropped_total"], "queued": stats["queued"],
            "max_in_any_30s": worst, "limit": 20,
            "unaccounted": stats["offered"] - stats["sent"] - stats["queued"]
            - stats["dropped_total"],
            "confirm_dropped": sum(stats["dropped"]["confirm"].values())}


def main() -> None:
    args = parser(__doc__).parse_args()
    r = {"latency": latency(150 if args.quick else 1000),
         "interpretation": interpretation(20_000 if args.quick else 100_000),
         "limiter": limiter_accuracy()}
    lat, it, lim = r["latency"], r["interpretation"], r["limiter"]

    def line(name: str) -> str:
        return (f"{lat[f'{name}_median_ms']} / {lat[f'{name}_p95_ms']} ms"
                + (f"  (p95 {lat[f'{name}_ratio_p95']}x the bare bot; target <= "
                   f"{TARGET_RATIO}x)" if name != "peer_ping" else ""))

    emit(args, r, [
        ("commands per case", lat["n"]),
        ("bare twitchio bot !ping, median / p95", line("peer_ping")),
        ("swarm !status", line("status")),
        ("swarm !ask (interpretation, queue commit)", line("ask")),
        ("swarm !agent (queue commit)", line("agent")),
        ("interpretation", (f"{it['interpret_lines_per_s']} lines/s "
                           f"({it['interpret_cost_ratio']}x a plain keyword router)")),
        ("limiter, 20,000 offers in 600 s", (f"max {lim['max_in_any_30s']} per 30 s (limit 20),"
                                            f" {lim['unaccounted']} unaccounted, "
                                            f"{lim['confirm_dropped']} confirmations dropped")),
    ])


if __name__ == "__main__":
    main()
