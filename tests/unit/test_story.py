"""The story's step machine without a platform: durations, CTR windows from the simulator's
counters, the summary's verdict and the text summary."""

from __future__ import annotations

import pytest

from recpilot.story import STEPS, Story, StoryConfig, format_summary


def test_duration_scales_the_timed_steps():
    d = StoryConfig()
    c = StoryConfig.for_duration(60.0)
    timed = c.baseline_s + c.canary_s + c.policy_min_s + c.recovery_s
    assert timed == pytest.approx(60.0)
    assert c.policy_max_s >= c.policy_min_s
    assert c.baseline_s / c.recovery_s == pytest.approx(d.baseline_s / d.recovery_s)
    assert StoryConfig.for_duration(None) == d


def _story(samples):
    s = Story(StoryConfig(), echo=lambda m: None)
    s.samples.extend(samples)
    return s


def test_window_ctr_per_model_and_policy():
    s = _story([
        (0.0, 0, 0, {}, {}, 0),
        (10.0, 1000, 20, {"1": (1000, 20)}, {"ranker-order": (1000, 20)}, 3000),
        (16.0, 2000, 50, {"1": (1000, 20), "2": (1000, 30)}, {"ranker-order": (1000, 20), "3": (1000, 30)}, 4800),
        (20.0, 3000, 80, {"1": (1000, 20), "2": (2000, 60)}, {"ranker-order": (1000, 20), "3": (2000, 60)}, 6000),
    ])
    w = s.window(10.0)
    assert w["shown"] == 2000 and w["ctr"] == pytest.approx(0.03)
    assert w["by_model"] == {"2": {"shown": 2000, "ctr": 0.03}}  # version 1 showed nothing in the window
    assert w["by_policy"] == {"3": {"shown": 2000, "ctr": 0.03}}
    assert w["events_per_s"] == pytest.approx(300.0)
    whole = s.window(0, since=0.0)
    assert whole["ctr"] == pytest.approx(80 / 3000)
    assert s.production() == "2"


def _played(s: Story, lost: int, alert: bool, rollback: bool, base=0.018, pol=0.03):
    for st in s.steps.values():
        st.status = "done"
    s.ctr.update(baseline=base, with_policy=pol)
    s.events = {"produced": 10, "delivery_failed": 0, "accepted": 10 - lost, "rejected": 0, "duplicates": 0, "lost": lost}

    class Hook:
        def received(self):
            return [{"status": "firing", "labels": {"alertname": "CtrRegression", "model": "ranker", "version": "3"}}] if alert else []

    s.webhook = Hook()
    s.monitor_status = {"actions": [{"action": "rollback", "alert_name": "CtrRegression", "model_name": "ranker",
                                     "version": "3", "outcome": "executed"}] if rollback else []}
    return s.summary()


@pytest.mark.parametrize("lost,alert,rollback,base,pol,ok", [
    (0, True, True, 0.018, 0.03, True),
    (1, True, True, 0.018, 0.03, False),     # an event lost
    (0, False, True, 0.018, 0.03, False),    # no alert delivered
    (0, True, False, 0.018, 0.03, False),    # no rollback
    (0, True, True, 0.03, 0.02, False),      # CTR did not rise
])
def test_summary_verdict(lost, alert, rollback, base, pol, ok):
    summary = _played(_story([]), lost, alert, rollback, base, pol)
    assert summary["ok"] is ok
    assert summary["steps_reached"] == list(STEPS)
    assert summary["events"]["lost"] == lost
    assert summary["alert_delivered"] is alert and summary["rollback"] is rollback


def test_a_step_not_reached_fails_the_story():
    s = _story([])
    summary = _played(s, 0, True, True)
    assert summary["ok"]
    s.steps["recovery"].status = "failed"
    assert not s.summary()["ok"]


def test_text_summary_names_the_figures():
    text = format_summary(_played(_story([]), 0, True, True))
    assert "baseline 0.0180 -> with the learned policy 0.0300 (x1.67)" in text
    assert "CtrRegression(firing) x1" in text and "rollback ranker/3 executed" in text
    assert "lost 0" in text


def test_text_summary_says_when_it_was_stopped():
    s = _played(_story([]), 0, True, True)
    s.update(ok=False, error="interrupted")
    assert format_summary(s).startswith("recpilot run: the story did not reach its end (stopped by Ctrl-C)")
