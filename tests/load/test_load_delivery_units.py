"""Tracker, pacer, rate schedule and capacity verdicts, without sockets.

These modules import locust, which monkey-patches the standard library with
gevent at import; so each test runs its checks in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from loadsupport import ROOT


def run_isolated(code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_delivery_tracker_counts():
    run_isolated(
        """
        from loadtest.delivery import Tracker, token_of
        now = [100.0]
        fired = []
        t = Tracker(lambda name, ms, exc: fired.append((name, ms, exc)), timeout=5.0,
                    clock=lambda: now[0])
        assert token_of(b"Subject: x\\r\\nx-mailharness-token:  abc-1\\r\\n\\r\\n") == "abc-1"
        # seen once: one end-to-end sample, the time from the 250 to the EXISTS
        t.expect("a", "u@x"); t.submitted("a", 100.0); t.seen("a", "uid 1", 100.25)
        assert fired[-1][0] == "delivery end-to-end" and abs(fired[-1][1] - 250) < 1e-6
        # the same copy reported again is not a duplicate; another UID is
        t.seen("a", "uid 1", 100.3); t.seen("a", "uid 2", 100.4)
        assert t.counts["duplicated"] == 1 and fired[-1][0] == "delivery duplicate"
        # visible before the 250 was read: latency 0
        t.expect("b", "u@x"); t.seen("b", "uid 3", 101.0); t.submitted("b", 101.1)
        assert fired[-1][1] == 0.0 and t.counts["seen"] == 2
        # never seen: lost after the timeout (a failed request of the timeout's length)
        t.expect("c", "u@x"); t.submitted("c", 102.0)
        now[0] = 106.9; t.expire(); assert t.counts["lost"] == 0
        now[0] = 107.1; t.expire(); assert t.counts["lost"] == 1
        assert repr(fired[-1][2]).startswith("MessageLost") and fired[-1][1] == 5000.0
        t.seen("c", "uid 4", 107.5); assert t.counts["late"] == 1
        # a failed submission that arrives anyway; a cut-off one is forgotten
        t.expect("d", "u@x"); t.failed("d"); t.seen("d", "uid 5", 108.0)
        t.expect("e", "u@x"); t.abandon("e"); assert "e" not in t.entries
        assert t.counts["delivered_after_failure"] == 1
        # finish: closes submissions, loses what is still pending, keeps counts until reset
        t.expect("f", "u@x"); t.submitted("f", 108.0)
        now[0] = 200.0
        data = t.finish(sleep=lambda s: None)
        assert t.closed and data["lost"] == 2 and data["submitted"] == 4, data
        assert data["seen"] == 2 and data["lost_tokens"] == ["c", "f"], data
        t.reset(); assert not t.closed and t.counts["submitted"] == 0
        """
    )


def test_open_model_pacer_and_rate_shapes():
    run_isolated(
        """
        from loadtest.shapes import Pacer, RateSchedule
        now = [0.0]
        missed = []
        p = Pacer(max_lag=1.0, clock=lambda: now[0], on_missed=missed.append)
        assert p.claim() is None  # paused until a rate is set
        p.set_rate(10.0)
        slots = [p.claim() for _ in range(5)]
        assert slots == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4] or all(
            abs(s - 0.1 * i) < 1e-9 for i, s in enumerate(slots)), slots
        # slots are spaced 1/rate whatever happens: no claim beyond the horizon
        for _ in range(6):
            p.claim()
        assert p.claim() is None and p.started == 11
        # every user busy for 3 s: the slots older than max_lag are missed, not queued
        now[0] = 4.05
        slot = p.claim()
        assert abs(slot - 3.1) < 1e-9 and sum(missed) == p.missed == 20, (slot, missed)
        # a higher rate pulls in a slot claimed under the old one
        p.set_rate(0.01); p.set_rate(100.0)
        assert p.claim() <= now[0] + 0.01 + 1e-9
        step = RateSchedule(40.0, "step", steps=4, step_time=10)
        assert step.step_rates() == [10.0, 20.0, 30.0, 40.0]
        assert [step.at(t) for t in (0, 9.9, 10, 35, 500)] == [10, 10, 20, 40, 40]
        ramp = RateSchedule(50.0, "ramp", ramp_time=10)
        assert [ramp.at(t) for t in (0, 5, 10, 20)] == [0.0, 25.0, 50.0, 50.0]
        assert RateSchedule(7.0).at(123) == 7.0
        """
    )


def test_capacity_search_verdicts():
    run_isolated(
        """
        from loadtest.capacity import CapacitySearch, Snapshot, percentile
        assert percentile({}, 0.95) is None
        assert percentile({10: 90, 200: 10}, 0.95) == 200.0
        assert percentile({10: 96, 200: 4}, 0.95) == 10.0
        s = CapacitySearch([10.0, 20.0, 30.0], step_time=5, max_p95_ms=100, max_error_rate=0.01)
        ok = Snapshot(requests=500, failures=0, missed=0, histogram={5: 490, 50: 10})
        slow = Snapshot(requests=500, failures=0, missed=0, histogram={5: 400, 300: 100})
        failing = Snapshot(requests=500, failures=20, missed=0, histogram={5: 500})
        missing = Snapshot(requests=500, failures=0, missed=30, histogram={5: 500})
        assert s.judge(10.0, 5, ok).passed
        assert s.judge(10.0, 5, slow).reasons == ["p95 300 ms above 100 ms"]
        assert "error rate 4.00% above 1.00%" in s.judge(10.0, 5, failing).reasons
        assert "30 of ~50 arrivals missed" in s.judge(10.0, 5, missing).reasons[0]
        # step through a search with hand-made statistics
        class Entry:
            def __init__(self, method, n, f, hist):
                self.method, self.num_requests, self.num_failures = method, n, f
                self.response_times = hist
        class Stats:
            entries = {}
        st = Stats()
        def set_stats(n, hist):
            st.entries = {("DATA", "SMTP"): Entry("SMTP", n, 0, hist)}
        set_stats(0, {})
        assert s.rate_at(0, st) == 10.0
        set_stats(100, {5: 100})
        assert s.rate_at(5, st) == 20.0  # step 1 judged: sustained
        set_stats(200, {5: 100, 900: 100})
        assert s.rate_at(10, st) is None  # step 2: p95 900 ms, the search ends
        r = s.result()
        assert r["sustainable_rate"] == 10.0 and r["limit_reached"], r
        assert [v["passed"] for v in r["steps"]] == [True, False]
        """
    )
