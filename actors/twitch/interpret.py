"""Chat interpretation: what a Twitch chat line is, whether it goes to an agent, and to which.

Pure: one line in, one :class:`Interpretation` out; the service enqueues the line for
``agent`` only if ``forward``.

    >>> config = InterpretConfig.from_config({
    ...     "keywords": {"Agent-2": ["build", "ci"], "Agent-5": ["docs"]},
    ...     "default_agent": "Agent-1"})
    >>> agents = ["Agent-1", "Agent-2", "Agent-5"]
    >>> interpret("why is the build red?", Level.SUBSCRIBER, config, agents)
    Interpretation(kind='question', agent='Agent-2', reason='keywords: build', forward=True)
    >>> interpret("@agent 5 nice docs", Level.EVERYONE, config, agents).forward
    False
    >>> interpret("FREE FOLLOWERS AT bit.ly/x", Level.SUBSCRIBER, config, agents).reason
    'spam: link'

A line is, in this order: **spam** (never forwarded; levels at ``spam.exempt_level`` and up
are not checked), a **command** (starts with the prefix; the command layer handles it), an
agent **mention** (``Agent-3``, ``@Agent-3``, ``agent 3``: routed to that agent), a
**question** (ends with ``?`` or starts with a question word: routed by keywords), a
**greeting**, or **other**. Keyword routing scores each agent by how many of its keywords
(words or phrases, any case) the line contains; a tie or no match goes to
``default_agent`` (None: not forwarded). Free text is forwarded only from
``forward_level`` up (default subscriber): the replaced system forwarded anyone's.

Spam thresholds (defaults, like the streamer bots'): a link (any URL or bare domain with a
common TLD, except ``allowed_domains``); caps (>= 15 cased letters, >= 70 % upper case);
symbols (>= 10 non-alphanumeric characters, >= 50 % of the non-space ones: emoji walls,
ASCII art, zalgo); repetition (a character 15 times in a row, or >= 8 words of which at most
40 % distinct); copypasta (the same line of >= 20 characters from >= 3 other chatters within
30 s: count it with :class:`ChatEchoes` and pass ``echoes``); blocked phrases (whole words,
any case).
"""
from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, NamedTuple

from actors.twitch.levels import Level


class Kind(StrEnum):
    COMMAND = "command"
    QUESTION = "question"
    GREETING = "greeting"
    MENTION = "mention"
    SPAM = "spam"
    OTHER = "other"


class Interpretation(NamedTuple):
    """What a chat line is."""

    kind: str            # a Kind value (a plain str)
    agent: str | None    # the agent it is for (mention, question), else None
    reason: str          # why, for logs and ``!why``-style answers
    forward: bool        # enqueue it for ``agent``


@dataclass(frozen=True)
class SpamRules:
    """Spam filter thresholds (see the module docstring)."""

    links: bool = True
    allowed_domains: tuple[str, ...] = ()
    caps_min_letters: int = 15
    caps_ratio: float = 0.7
    symbols_min: int = 10
    symbols_ratio: float = 0.5
    char_run: int = 15
    repeat_min_words: int = 8
    repeat_distinct_ratio: float = 0.4
    echoes: int = 3
    echo_min_chars: int = 20
    blocked_phrases: tuple[str, ...] = ()
    exempt_level: Level = Level.VIP


@dataclass(frozen=True)
class InterpretConfig:
    """``keywords``: (agent, its keywords) pairs; build it from config with
    :meth:`from_config`. Frozen and hashable: the compiled matchers are cached per config."""

    prefix: str = "!"
    keywords: tuple[tuple[str, tuple[str, ...]], ...] = ()
    default_agent: str | None = None
    forward_level: Level = Level.SUBSCRIBER
    spam: SpamRules = field(default_factory=SpamRules)

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> InterpretConfig:
        """From ``services.twitch.interpretation``: prefix, keywords ``{agent: [words]}``,
        default_agent, forward_level (a level name), spam ``{SpamRules field: value}``."""
        unknown = set(data) - {"prefix", "keywords", "default_agent", "forward_level", "spam"}
        spam = dict(data.get("spam") or {})
        unknown |= set(spam) - {f.name for f in fields(SpamRules)}
        if unknown:
            raise ValueError(f"unknown interpretation key(s) {sorted(unknown)}")
        for key in ("allowed_domains", "blocked_phrases"):
            if key in spam:
                spam[key] = tuple(str(v) for v in spam[key])
        if "exempt_level" in spam:
            spam["exempt_level"] = Level.parse(spam["exempt_level"])
        prefix = str(data.get("prefix", "!"))
        if not prefix.strip() or prefix != prefix.strip():
            raise ValueError("the command prefix must be non-empty, without spaces")
        return cls(prefix=prefix,
                   keywords=tuple((str(agent), tuple(str(k) for k in words))
                                  for agent, words in (data.get("keywords") or {}).items()),
                   default_agent=data.get("default_agent"),
                   forward_level=Level.parse(data.get("forward_level", "subscriber")),
                   spam=SpamRules(**spam))


_WORD = re.compile(r"\w+")
_TLDS = ("com|net|org|io|tv|gg|ly|me|xyz|ru|co|info|biz|link|app|dev|site|online|shop|club|"
         "top|live|stream|sh|to|cc|us|uk|de")
_LINK = re.compile(r"(?i)\b(?:https?://|www\.)\S+|\b(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+"
                   rf"(?:{_TLDS})\b(?:/\S*)?")
QUESTION_WORDS = frozenset(
    ["who", "what", "why", "how", "when", "where", "which", "whose", "can", "could", "would", "should", "will", "is", "are", "am", "was", "were", "does", "do", "did", "has", "have", "may", "might"])
GREETINGS = frozenset(["hi", "hello", "hey", "heya", "hiya", "hai", "yo", "howdy", "hola", "sup", "greetings", "o7", "gm", "morning", "evening"])


@dataclass(frozen=True)
class _Compiled:
    mentions: tuple[tuple[str, re.Pattern[str]], ...]
    keywords: tuple[tuple[str, tuple[str, ...]], ...]   # agent, " word phrase " forms
    blocked: re.Pattern[str] | None
    char_run: re.Pattern[str]


@functools.lru_cache(maxsize=32)
def _compile(config: InterpretConfig, agents: tuple[str, ...]) -> _Compiled:
    mentions = []
    for agent in agents:
        parts = [re.escape(p) for p in re.split(r"[\s_-]+", agent.strip()) if p]
        if parts:  # "Agent-3" also as "@agent-3", "agent 3", "agent_3", "agent3"
            mentions.append((agent, re.compile(
                r"(?i)(?<!\w)@?" + r"[\s_-]?".join(parts) + r"(?!\w)")))
    keywords = tuple(
        (agent, tuple(f" {' '.join(_WORD.findall(k.casefold()))} " for k in words
                      if _WORD.search(k)))
        for agent, words in config.keywords if agent in agents)
    phrases = [r"\s+".join(map(re.escape, p.split())) for p in config.spam.blocked_phrases
               if p.strip()]
    blocked = re.compile(r"(?i)(?<!\w)(?:" + "|".join(phrases) + r")(?!\w)") if phrases else None
    run = max(2, config.spam.char_run)
    return _Compiled(tuple(mentions), keywords, blocked, re.compile(rf"(.)\1{{{run - 1},}}"))


def interpret(text: str, level: Level, config: InterpretConfig, agents: Sequence[str], *,
              echoes: int = 0) -> Interpretation:
    """Classify one chat line from a user at ``level``. ``agents``: the agents that exist
    now (mentions and keyword routes only go to these). ``echoes``: how many other
    chatters posted the same line just before (:meth:`ChatEchoes.count`)."""
    compiled = _compile(config, tuple(agents))
    line = " ".join(text.split())
    if not line:
        return Interpretation(Kind.OTHER.value, None, "empty", False)
    if level < config.spam.exempt_level:
        spam = _spam_reason(line, config.spam, compiled, echoes)
        if spam:
            return Interpretation(Kind.SPAM.value, None, f"spam: {spam}", False)
    prefix = config.prefix
    if line.startswith(prefix) and len(line) > len(prefix) and not line[len(prefix)].isspace():
        return Interpretation(Kind.COMMAND.value, None, f"command {line.split()[0]}", False)
    mentioned = _mentioned(line, compiled)
    if mentioned:
        return _routed(Kind.MENTION, mentioned, f"mentions {mentioned}", level, config)
    words = _WORD.findall(line.casefold())
    if line.endswith("?") or (words and words[0] in QUESTION_WORDS):
        agent, reason = _route(words, compiled, config.default_agent)
        return _routed(Kind.QUESTION, agent, reason, level, config)
    if words and (words[0] in GREETINGS or words[:2] in (["good", "morning"],
                                                          ["good", "evening"])):
        return Interpretation(Kind.GREETING.value, None, "greeting", False)
    return Interpretation(Kind.OTHER.value, None, "chat", False)


def route(text: str, config: InterpretConfig, agents: Sequence[str]) -> tuple[str | None, str]:
    """The agent a line is for, whatever its kind (``!ask`` routes every question): the first
    agent it mentions, else the best keyword match, else ``default_agent``; and why.

    >>> route("docs or build, agent 1?", InterpretConfig(default_agent="Agent-1"), ["Agent-1"])
    ('Agent-1', 'mentions Agent-1')
    """
    compiled = _compile(config, tuple(agents))
    line = " ".join(text.split())
    mentioned = _mentioned(line, compiled)
    if mentioned:
        return mentioned, f"mentions {mentioned}"
    return _route(_WORD.findall(line.casefold()), compiled, config.default_agent)


def _mentioned(line: str, compiled: _Compiled) -> str | None:
    first = min(((m.start(), agent) for agent, pattern in compiled.mentions
                 if (m := pattern.search(line))), default=None)
    return first[1] if first else None


def _routed(kind: Kind, agent: str | None, reason: str, level: Level,
            config: InterpretConfig) -> Interpretation:
    if agent is None:
        return Interpretation(kind.value, None, reason, False)
    if level < config.forward_level:
        return Interpretation(kind.value, agent, f"{reason}; not forwarded below "
                                           f"{config.forward_level.name.lower()}", False)
    return Interpretation(kind.value, agent, reason, True)


def _route(words: list[str], compiled: _Compiled, default: str | None) -> tuple[str | None, str]:
    padded = f" {' '.join(words)} "
    scores = []
    for agent, keywords in compiled.keywords:
        hits = [k.strip() for k in keywords if k in padded]
        if hits:
            scores.append((len(hits), agent, hits))
    best = max((score for score, _, _ in scores), default=0)
    top = [(agent, hits) for score, agent, hits in scores if score == best]
    if len(top) == 1:
        return top[0][0], "keywords: " + ", ".join(top[0][1])
    why = f"keyword tie ({', '.join(a for a, _ in top)})" if top else "no keyword matched"
    return default, why + (f": default {default}" if default else ": no default agent")


def _spam_reason(line: str, rules: SpamRules, compiled: _Compiled, echoes: int) -> str | None:
    if compiled.blocked and compiled.blocked.search(line):
        return "blocked phrase"
    if rules.links and any(not _allowed(m.group(0), rules.allowed_domains)
                           for m in _LINK.finditer(line)):
        return "link"
    if echoes >= rules.echoes and len(line) >= rules.echo_min_chars:
        return "copypasta"
    words = line.casefold().split()
    if compiled.char_run.search(line) or (
            len(words) >= rules.repeat_min_words
            and len(set(words)) <= rules.repeat_distinct_ratio * len(words)):
        return "repetition"
    cased = [c for c in line if c.isupper() or c.islower()]
    if len(cased) >= rules.caps_min_letters and (
            sum(c.isupper() for c in cased) >= rules.caps_ratio * len(cased)):
        return "caps"
    visible = line.replace(" ", "")
    symbols = sum(not c.isalnum() for c in visible)
    if symbols >= rules.symbols_min and symbols >= rules.symbols_ratio * len(visible):
        return "symbols"
    return None


def _allowed(link: str, domains: tuple[str, ...]) -> bool:
    host = re.sub(r"(?i)^(?:https?://)?(?:www\.)?", "", link).split("/")[0].casefold()
    return any(host == d or host.endswith("." + d) for d in (d.casefold() for d in domains))


class ChatEchoes:
    """Counts how many other chatters posted the same line (case and spacing aside) within
    ``window_s``: a copypasta wave. Bounded to ``max_lines`` distinct recent lines.

    >>> echoes = ChatEchoes()
    >>> [echoes.count("this is a copypasta line", user, now=1.0) for user in "abca"]
    [0, 1, 2, 2]
    """

    def __init__(self, window_s: float = 30.0, min_chars: int = 20, max_lines: int = 2000):
        self.window_s, self.min_chars, self.max_lines = window_s, min_chars, max_lines
        self._lines: OrderedDict[str, dict[str, float]] = OrderedDict()

    def count(self, text: str, user: str, now: float) -> int:
        """Record ``user`` posting ``text`` at ``now``; the number of *other* chatters who
        posted it within the window (0 for lines shorter than ``min_chars``)."""
        line = " ".join(text.casefold().split())
        if len(line) < self.min_chars:
            return 0
        posters = self._lines.pop(line, {})
        posters = {u: t for u, t in posters.items() if now - t < self.window_s}
        others = len(posters) - (user in posters)
        posters[user] = now
        self._lines[line] = posters
        while len(self._lines) > self.max_lines:
            self._lines.popitem(last=False)
        return others
