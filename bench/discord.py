"""Discord command -> reply latency through the swarm, against a bare discord.py bot on the same
simulated platform in the same run, and a burst of alerts into the status channel.

Swarm: a user types ``!status`` (discord service -> admin -> registry -> back, rendered as an
embed) or ``!message Agent-1 ...`` (-> admin -> queue commit -> back) in a channel of the
simulated Discord (``actors/discord/simulator.py``); the time runs from the message being sent
on the gateway to the bot's reply being posted over REST.
Peer, same run: a bare ``commands.Bot`` in this process answering ``!ping`` with ``ctx.reply``
on the same platform (no swarm, no actor hops). Requests alternate between the three, one at a
time. Burst: 500 notifications sent to the discord service at once: posts used, seconds until
every one is accounted for (listed or counted), and how many were lost (must be 0).

    python -m bench.discord [--json] [--quick]
"""
from __future__ import annotations

import asyncio
import os
import threading
import time

import discord
from discord.ext import commands

from actors.discord.simulator import GUILD_ID, SimDiscordThread, redirect_discord_py
from bench.common import BenchSwarm, emit, median_ms, p95_ms, parser
from system import protocol

TOKEN = "bench-token"
PEER_CH, SWARM_CH, STATUS_CH, USER = 601, 602, 603, 701
TARGET_RATIO = 2.0
BURST = 500


def _bare_bot(sim: SimDiscordThread, stop: threading.Event) -> threading.Thread:
    """The peer: a plain discord.py bot with one command, on its own loop and thread."""
    async def main() -> None:
        bot = commands.Bot(command_prefix="!", intents=discord.Intents.all(),
                           chunk_guilds_at_startup=False, guild_ready_timeout=0.1)

        @bot.command()
        async def ping(ctx: commands.Context) -> None:
            await ctx.reply("pong", mention_author=False)

        with redirect_discord_py(sim.api_base, sim.gateway_url):
            task = asyncio.create_task(bot.start(TOKEN))
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await bot.close()
            await asyncio.gather(task, return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    return thread


def _timed(sim: SimDiscordThread, channel: int, text: str) -> float:
    t0 = time.perf_counter()
    sent = sim.message(channel, USER, text)
    sim.wait_post(channel, lambda m: (m.get("message_reference") or {}).get(
        "message_id") == sent["id"], timeout=30)
    return time.perf_counter() - t0


def run(n: int) -> dict:
    os.environ["BENCH_DISCORD_TOKEN"] = TOKEN
    with SimDiscordThread(token=TOKEN, rate_limit=(100_000, 1.0)) as sim:
        for channel in (PEER_CH, SWARM_CH, STATUS_CH):
            sim.add_channel(channel, f"c{channel}")
        sim.add_role(501, "operator")
        sim.add_member(USER, "bencher", roles=[501])
        stop = threading.Event()
        peer = _bare_bot(sim, stop)
        sim.wait_ready(timeout=10)
        discord_block = {
            "enabled": True, "token": "${env:BENCH_DISCORD_TOKEN}", "guild_ids": [GUILD_ID],
            "status_channel_id": STATUS_CH, "api_base": sim.api_base,
            "gateway_url": sim.gateway_url, "identify_delay_s": 0,
            "permissions": {"operators": {"roles": [501]}}, "report": {"linger_s": 0.2}}
        with BenchSwarm({"services": {"discord": discord_block},
                         "agents": {"names": ["Agent-1"]}}) as swarm:
            swarm.start()
            sim.wait_ready(timeout=20, count=2)
            cases = {"peer_ping": (PEER_CH, "!ping"), "status": (SWARM_CH, "!status"),
                     "message": (SWARM_CH, "!message Agent-1 bench")}
            for channel, text in cases.values():  # warm-up: connections, caches
                _timed(sim, channel, text)
            times: dict[str, list[float]] = {name: [] for name in cases}
            names = list(cases)
            for i in range(n):
                for name in names[i % 3:] + names[:i % 3]:
                    times[name].append(_timed(sim, *cases[name]))
            burst = _burst(sim, swarm)
        stop.set()
        peer.join(10)
    r: dict = {"n": n, "target_ratio_p95": TARGET_RATIO, **burst}
    for name, xs in times.items():
        r[f"{name}_median_ms"], r[f"{name}_p95_ms"] = median_ms(xs), p95_ms(xs)
    for name in ("status", "message"):
        r[f"{name}_ratio_p95"] = round(r[f"{name}_p95_ms"] / r["peer_ping_p95_ms"], 2)
        r[f"{name}_ratio_median"] = round(r[f"{name}_median_ms"] / r["peer_ping_median_ms"], 2)
    return r


def _burst(sim: SimDiscordThread, swarm: BenchSwarm) -> dict:
    from system.admin import AdminClient
    from system.launcher import connect

    found = AdminClient(swarm.config).call(protocol.ADMIN_LOOKUP, {"name": "discord"})
    addr = protocol.address_from_wire(found["addr"])
    before = len(sim.posts(STATUS_CH))
    t0 = time.perf_counter()
    with connect(swarm.config).private() as ctx:
        for i in range(BURST):
            ctx.tell(addr, protocol.NOTIFY.encode({
                "kind": "alert", "severity": "error", "service": f"svc{i % 5}",
                "summary": f"burst {i}", "key": f"burst:{i}"}))

    def accounted() -> tuple[int, int]:
        posts = [p["content"] for p in sim.sim.posts(STATUS_CH)[before:] if "burst" in p["content"]]
        lines = [line for p in posts for line in p.splitlines()]
        return (sum(line.startswith("🔴") for line in lines)
                + sum(int(line.split()[2]) for line in lines if line.startswith("… and ")),
                len(posts))

    sim.wait_until(lambda: accounted()[0] >= BURST, timeout=60)
    seconds = time.perf_counter() - t0
    count, posts = accounted()
    return {"burst": BURST, "burst_posts": posts, "burst_seconds": round(seconds, 2),
            "burst_lost": BURST - count}


def main() -> None:
    args = parser(__doc__).parse_args()
    r = run(150 if args.quick else 1000)

    def line(name: str) -> str:
        return (f"{r[f'{name}_median_ms']} / {r[f'{name}_p95_ms']} ms"
                + (f"  (p95 {r[f'{name}_ratio_p95']}x the bare bot; target <= {TARGET_RATIO}x)"
                   if name != "peer_ping" else ""))

    emit(args, r, [
        ("commands per case", r["n"]),
        ("bare discord.py bot !ping, median / p95", line("peer_ping")),
        ("swarm !status", line("status")),
        ("swarm !message (queue commit)", line("message")),
        (f"{BURST} alerts in one burst",
         f"{r['burst_posts']} posts in {r['burst_seconds']} s, {r['burst_lost']} lost"),
    ])


if __name__ == "__main__":
    main()
