"""The status channel reporter: bursts fold into few posts within the budget, nothing lost."""
from __future__ import annotations

import doctest

from hypothesis import given
from hypothesis import strategies as st

from actors.discord import reporter
from actors.discord.reporter import MAX_CHARS, ChannelReporter


def notice(i: int, kind: str = "alert", severity: str = "error", key: str | None = None) -> dict:
    return {"kind": kind, "severity": severity, "service": f"svc{i % 7}",
            "summary": f"thing {i} happened", "details": "x" * (i % 50), "key": key or f"k{i}"}


def drain(r: ChannelReporter, start: float, step: float = 0.1, until: float = 600.0):
    """Run the reporter's clock forward; (time, text) of every post."""
    now, posts = start, []
    while r.wait_s(now) is not None and now < until:
        text = r.take(now)
        if text is not None:
            posts.append((now, text))
        now += step
    return posts


def test_doctests():
    assert doctest.testmod(reporter).failed == 0


def test_a_200_alert_burst_is_all_accounted_for_in_few_posts_within_the_budget():
    r = ChannelReporter(posts=5, per_s=5.0, linger_s=1.0)
    for i in range(200):
        r.add(notice(i), now=0.0)
    posts = drain(r, 0.0)
    assert r.backlog == 0 and r.items_in == r.items_out == 200
    assert 1 <= len(posts) <= 5
    assert all(len(text) <= 2000 for _, text in posts)
    assert "more:" in posts[-1][1]  # what did not fit is summed up, not dropped
    lines = [line for _, text in posts for line in text.splitlines()]
    listed = sum(not line.startswith("…") for line in lines)
    summed = sum(int(line.split()[2]) for line in lines if line.startswith("… and "))
    assert listed + summed == 200


def test_repeats_of_one_cause_fold_into_one_line_with_a_count():
    r = ChannelReporter(linger_s=0.0)
    for _ in range(40):
        r.add(notice(1, key="queue:restart"), now=0.0)
    (_, text), = drain(r, 0.0)
    assert text.count("\n") == 0 and "×40" in text


def test_the_first_notice_waits_for_its_burst_then_posts_go_no_faster_than_the_budget():
    r = ChannelReporter(posts=5, per_s=5.0, linger_s=1.0)
    r.add(notice(0), now=0.0)
    assert r.take(0.5) is None
    assert r.take(1.0) is not None
    times = []
    for t in range(100):  # one notice every 0.1 s for 10 s
        r.add(notice(t), now=1.0 + t * 0.1)
        if r.take(1.0 + t * 0.1) is not None:
            times.append(1.0 + t * 0.1)
    times += [t for t, _ in drain(r, 11.0)]
    window = [1.0, *times]
    for i in range(len(window) - 5):
        assert window[i + 5] - window[i] >= 5.0 - 1e-9, window


def test_report_config_filters_kinds_and_severities():
    r = ChannelReporter(kinds=("alert",), min_severity="warning")
    assert not r.add(notice(1, kind="state"), 0.0)
    assert not r.add(notice(2, severity="info"), 0.0)
    assert r.add(notice(3, severity="warning"), 0.0)
    assert r.filtered == 2 and r.backlog == 1


def test_a_flood_of_distinct_causes_stays_bounded_and_counted():
    r = ChannelReporter(linger_s=0.0)
    for i in range(5000):
        r.add(notice(i), now=0.0)
    assert len(r.pending) <= reporter.MAX_KEYS
    posts = drain(r, 0.0)
    assert r.backlog == 0 and len(posts) == 1 and "(other)" in posts[0][1]


@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 20), st.integers(1, 5)), max_size=300))
def test_every_notice_is_posted_or_summed_up_and_no_post_exceeds_the_limit(events):
    r = ChannelReporter(posts=5, per_s=5.0, linger_s=0.5)
    events.sort(key=lambda e: e[1])
    posts = []
    for i, (key, at, count) in enumerate(events):
        r.add({**notice(i, key=f"k{key}"), "count": count}, now=at)
        if (text := r.take(at)) is not None:
            posts.append((at, text))
    posts += drain(r, 20.0)
    assert r.backlog == 0
    assert all(len(text) <= MAX_CHARS for _, text in posts)
    stamps = [t for t, _ in posts]
    for i in range(len(stamps) - 5):
        assert stamps[i + 5] - stamps[i] >= 5.0 - 1e-9
