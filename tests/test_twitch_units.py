"""The Twitch service's pure parts: user levels and cooldowns, the output limiter, chat
interpretation, the quote book. No actor system, no platform."""
from __future__ import annotations

import doctest
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.twitch import interpret as interpret_module
from actors.twitch import levels, limiter, quotes
from actors.twitch.interpret import ChatEchoes, InterpretConfig, interpret
from actors.twitch.levels import Cooldown, Cooldowns, Level, level_of
from actors.twitch.limiter import SUFFIX, OutputLimiter, Priority, split_message
from actors.twitch.quotes import QuoteBook


@pytest.mark.parametrize("module", [levels, limiter, interpret_module, quotes])
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted and not result.failed


# -- levels and cooldowns ------------------------------------------------------------------------
def test_levels_from_badges_and_ids():
    badge = lambda set_id: {"set_id": set_id, "id": "1", "info": ""}
    assert level_of([]) is Level.EVERYONE
    assert level_of([badge("founder")]) is Level.SUBSCRIBER
    assert level_of([badge("subscriber"), badge("moderator")]) is Level.MODERATOR
    assert level_of([badge("staff"), badge("turbo")]) is Level.EVERYONE
    assert level_of([], chatter_id="7", broadcaster_id="7") is Level.BROADCASTER
    assert Level.parse("Mod") is Level.MODERATOR and Level.parse("sub") is Level.SUBSCRIBER
    with pytest.raises(ValueError, match="unknown user level 'king'.*broadcaster"):
        Level.parse("king")


def test_cooldowns_global_user_bypass_and_bad_config():
    cooldowns = Cooldowns({"!ask": {"global_s": 5, "user_s": 60}}, notify=False)
    assert cooldowns.check("ask", "a", Level.EVERYONE, 0.0) == (True, None)
    assert cooldowns.check("ask", "b", Level.EVERYONE, 1.0) == (False, None)  # global
    assert cooldowns.check("ask", "b", Level.EVERYONE, 5.0) == (True, None)
    assert cooldowns.check("ask", "a", Level.EVERYONE, 30.0) == (False, None)  # per user
    assert cooldowns.check("ask", "a", Level.EVERYONE, 60.0) == (True, None)
    assert cooldowns.check("status", "a", Level.EVERYONE, 60.0) == (True, None)  # no rule
    # a moderator is not held back and does not start a cooldown for viewers
    mods = Cooldowns({"ask": Cooldown(global_s=10)}, bypass="moderator")
    assert mods.check("ask", "m", Level.MODERATOR, 0.0) == (True, None)
    assert mods.check("ask", "v", Level.EVERYONE, 0.5) == (True, None)
    with pytest.raises(ValueError, match="unknown cooldown key"):
        Cooldown.from_config({"seconds": 3})
    with pytest.raises(ValueError, match=">= 0"):
        Cooldown.from_config({"user_s": float("nan")})


# -- output limiter ------------------------------------------------------------------------------
def test_limiter_splits_long_lines_at_words_and_keeps_room_for_the_suffix():
    text = " ".join(f"word{n}" for n in range(300))  # 2,189 characters
    parts = split_message(text, 492)
    assert all(len(p) <= 492 for p in parts) and " ".join(parts) == text
    assert split_message("x" * 20, 8) == ["xxxxxxxx", "xxxxxxxx", "xxxx"]
    out = OutputLimiter(margin_s=0)
    assert out.offer("c", text, Priority.ANSWER, 0.0) == len(parts)
    assert [t for _, t in out.due(0.0)] == parts


def test_limiter_duplicates_answers_suffixed_notices_dropped():
    out = OutputLimiter(margin_s=0)
    for _ in range(2):
        out.offer("c", "all green", Priority.ANSWER, 0.0)
        out.offer("c", "gas: go for Agent-2", Priority.NOTICE, 0.0)
    sent = [t for _, t in out.due(0.0)]
    assert sent == ["all green", f"all green {SUFFIX}", "gas: go for Agent-2"]
    assert out.stats()["dropped"]["notice"]["duplicate"] == 1
    out.offer("c", "all green", Priority.ANSWER, 31.0)  # outside Twitch's 30 s window
    assert out.due(31.0) == [("c", "all green")]


def test_limiter_full_queue_drops_lowest_priority_and_expires_stale_answers():
    out = OutputLimiter(limit=1, max_queue=3, margin_s=0)
    out.offer("c", "p1", Priority.PERIODIC, 0.0)
    out.offer("c", "a1", Priority.ANSWER, 0.0)
    out.offer("c", "a2", Priority.ANSWER, 0.0)
    assert out.offer("c", "ok", Priority.CONFIRM, 0.0) == 1  # evicts the periodic post
    assert out.offer("c", "p2", Priority.PERIODIC, 0.0) == 0  # the incoming one is lowest
    assert out.due(0.0) == [("c", "ok")]
    assert out.due(100.0) == []  # both answers waited > 60 s
    stats = out.stats()
    assert stats["dropped"]["periodic"]["full"] == 2
    assert stats["dropped"]["answer"]["expired"] == 2
    assert stats["offered"] == stats["sent"] + stats["queued"] + stats["dropped_total"]


def test_limiter_moderator_channels_get_the_higher_limit():
    out = OutputLimiter(limit=2, moderator_limit=5, margin_s=0)
    out.set_moderator("mod", True)
    for channel in ("plain", "mod"):
        for n in range(6):
            out.offer(channel, f"line {n}", Priority.ANSWER, 0.0)
    sent = out.due(0.0)
    assert [c for c, _ in sent].count("plain") == 2 and [c for c, _ in sent].count("mod") == 5
    assert out.next_due_in(0.0) == 30.0 and out.next_due_in(30.0) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.sampled_from(list(Priority)),
                          st.sampled_from(["a", "b", "c", "a b c " * 40])),
                min_size=1, max_size=200))
def test_limiter_never_exceeds_the_rate_and_accounts_for_every_part(events):
    out = OutputLimiter(limit=4, window_s=10.0, max_queue=20, margin_s=0.5)
    now, sends = 0.0, []
    for step, priority, text in events:
        now += step
        out.offer("c", text, priority, now)
        sends += [now for _ in out.due(now)]
    while (wait := out.next_due_in(now)) is not None:
        now += wait
        sends += [now for _ in out.due(now)]
    for i, at in enumerate(sends):  # any 10 s window holds at most 4 sends
        assert sum(1 for t in sends[i:] if t < at + 10.0) <= 4
    stats = out.stats()
    assert stats["offered"] == stats["sent"] + stats["queued"] + stats["dropped_total"]
    assert stats["dropped"]["confirm"]["expired"] == 0


# -- interpretation ------------------------------------------------------------------------------
CONFIG = InterpretConfig.from_config({
    "keywords": {"Agent-2": ["build", "ci"], "Agent-3": ["docs", "build"],
                 "Agent-4": ["test suite"]},
    "default_agent": "Agent-1", "spam": {"blocked_phrases": ["buy followers"],
                                         "allowed_domains": ["github.com"]}})
AGENTS = ["Agent-1", "Agent-2", "Agent-3", "Agent-4"]


@pytest.mark.parametrize("text, level, kind, agent, forward", [
    ("!status Agent-2", Level.EVERYONE, "command", None, False),
    ("Agent-3: rerun the docs job", Level.SUBSCRIBER, "mention", "Agent-3", True),
    ("hey @agent 4 nice", Level.SUBSCRIBER, "mention", "Agent-4", True),
    ("is the test suite green", Level.SUBSCRIBER, "question", "Agent-4", True),
    ("why is the build red?", Level.SUBSCRIBER, "question", "Agent-1", True),  # tie
    ("what is the ci doing?", Level.EVERYONE, "question", "Agent-2", False),  # below level
    ("anyone there?", Level.VIP, "question", "Agent-1", True),  # no match: default
    ("hello chat", Level.EVERYONE, "greeting", None, False),
    ("lol", Level.EVERYONE, "other", None, False),
    ("   ", Level.EVERYONE, "other", None, False),
    ("see https://github.com/x/y is it fixed?", Level.SUBSCRIBER, "question", "Agent-1", True),
])
def test_interpretation_kinds_and_routes(text, level, kind, agent, forward):
    result = interpret(text, level, CONFIG, AGENTS)
    assert (result.kind, result.agent, result.forward) == (kind, agent, forward), result


@pytest.mark.parametrize("text, reason", [
    ("Agent-2 visit scam.xyz now?", "link"),
    ("WHY IS EVERYTHING BROKEN AGENT-2 ANSWER ME", "caps"),
    ("!!!!@@@@####$$$$ %%%% ^^^^", "symbols"),
    ("noooooooooooooooooooo", "repetition"),
    ("go go go go go go go go go", "repetition"),
    ("want to BUY   followers? Agent-2", "blocked phrase"),
])
def test_spam_is_never_forwarded(text, reason):
    result = interpret(text, Level.SUBSCRIBER, CONFIG, AGENTS)
    assert result.kind == "spam" and result.reason == f"spam: {reason}" and not result.forward
    assert interpret(text, Level.VIP, CONFIG, AGENTS).kind != "spam"  # exempt level


def test_copypasta_and_config_errors():
    echoes, line = ChatEchoes(), "Agent-2 this is the copypasta of the day"
    counts = [echoes.count(line, user, now=0.0) for user in ("a", "b", "c", "d")]
    assert counts == [0, 1, 2, 3]
    result = interpret(line, Level.SUBSCRIBER, CONFIG, AGENTS, echoes=counts[-1])
    assert result.reason == "spam: copypasta"
    assert echoes.count(line, "e", now=31.0) == 0  # the wave is over
    with pytest.raises(ValueError, match="unknown interpretation key"):
        InterpretConfig.from_config({"keyword": {}})
    with pytest.raises(ValueError, match="prefix"):
        InterpretConfig.from_config({"prefix": " "})


# -- quotes --------------------------------------------------------------------------------------
def test_quote_book_packaged_added_removed_and_no_repeats_across_restarts(tmp_path):
    packaged = tmp_path / "quotes.txt"
    packaged.write_text("one\n\ntwo\nthree\n", encoding="utf-8")
    book = QuoteBook(tmp_path / "q.db", packaged, rng=random.Random(1))
    assert book.count() == 3 and book.get(2).text == "two"
    n = book.add("  four   ", by="twitch:mod")
    assert n == 4 and book.get(n).added_by == "twitch:mod"
    with pytest.raises(ValueError, match="already quote #1"):
        book.add("one", by="twitch:mod")
    with pytest.raises(ValueError, match="control characters"):
        book.add("bad\x07", by="twitch:mod")
    drawn = [book.next().n, book.next().n]
    book.close()
    book = QuoteBook(tmp_path / "q.db", packaged, rng=random.Random(2))  # a restart
    drawn += [book.next().n, book.next().n]
    assert sorted(drawn) == [1, 2, 3, 4]  # the round continued: each once
    draws = [book.next().n for _ in range(40)]
    assert all(a != b for a, b in zip([drawn[-1], *draws], draws))  # never twice in a row
    assert book.remove(2, by="twitch:mod").text == "two" and book.get(2) is None
    with pytest.raises(LookupError, match="no quote #2"):
        book.remove(2, by="twitch:mod")
    assert 2 not in {book.next().n for _ in range(20)}
    packaged.write_text("one\nthree\nfive\n", encoding="utf-8")  # file edited
    book.close()
    book = QuoteBook(tmp_path / "q.db", packaged)
    assert book.get(5).text == "five" and book.count() == 4  # 1, 3, 4, 5
    book.close()


def test_quote_book_reads_extra_quotes_and_survives_a_failing_source(tmp_path):
    packaged = tmp_path / "quotes.txt"
    packaged.write_text("one\n", encoding="utf-8")
    calls = []

    def brain():
        calls.append(1)
        if len(calls) > 1:
            raise OSError("brain is down")
        return ["a learning", "x" * 1000]

    book = QuoteBook(tmp_path / "q.db", packaged, extra=brain)
    assert {book.next().text, book.next().text} == {"one", "a learning"}
    assert book.next() is not None and book.extra_error == "OSError: brain is down"
    book.close()


def test_limiter_counts_a_slow_send_from_when_it_reached_the_platform():
    out = OutputLimiter(limit=2, window_s=10.0, margin_s=0)
    for n in range(3):
        out.offer("c", f"line {n}", Priority.ANSWER, 0.0)
    assert out.due(0.0, most=1) == [("c", "line 0")]
    out.delivered("c", 4.0)  # the request took 4 s (a busy loop, a slow platform)
    assert out.due(0.0) == [("c", "line 1")]
    assert out.next_due_in(10.0) == 4.0  # line 0's slot is back at 14, not at 10
