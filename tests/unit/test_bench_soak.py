"""`recpilot bench soak`'s pure parts: the slope, the rows, the verdicts and the table from samples."""

from __future__ import annotations

import pytest

from bench import soak


def _samples(n: int = 61, step: float = 10.0, rss=None, lag=None) -> list[dict]:
    """``n`` readings ``step`` s apart; ``rss``/``lag``: name -> f(t) (None: no reading then)."""
    out = []
    for i in range(n):
        t = i * step
        out.append({"t": t,
                    "rss_mib": {k: f(t) for k, f in (rss or {}).items() if f(t) is not None},
                    "cpu_cores": {k: 0.5 for k in (rss or {})} if i else {},
                    "lag": {k: f(t) for k, f in (lag or {}).items() if f(t) is not None},
                    "sim": {"steps_per_s": 250.0 if i else None, "events_per_s": 200.0, "recommend_per_s": 30.0 if i else None, "ctr": 0.02},
                    "load1": 2.0 + (i % 2)})
    return out


def test_slope_is_per_minute_and_needs_three_points():
    assert soak.slope_per_min([(0, 100.0), (60, 102.0), (120, 104.0)]) == pytest.approx(2.0)
    assert soak.slope_per_min([(0, 5.0), (30, 5.0), (60, 5.0), (90, 5.0)]) == pytest.approx(0.0)
    assert soak.slope_per_min([(0, 1.0), (10, 2.0)]) is None
    assert soak.slope_per_min([(5, 1.0), (5, 2.0), (5, 3.0)]) is None  # no spread in time


def test_memory_rows_start_one_minute_end_max_and_second_half_slope():
    # ingest: warms up 100 -> 150 MiB in the first 3 minutes, then flat with a little noise;
    # features: grows 3 MiB/min all along
    samples = _samples(rss={"ingest": lambda t: min(150.0, 100 + t / 3.6) + (0.4 if int(t) % 20 else -0.4),
                            "features": lambda t: 200 + 3 * t / 60})
    s = soak.summarise(samples)
    rows = {r["name"]: r for r in s["memory"]}
    assert [r["name"] for r in s["memory"]] == ["ingest", "features"]  # the stack's order
    ing = rows["ingest"]
    assert ing["rss_start_mib"] == pytest.approx(99.6)
    assert ing["rss_1min_mib"] == pytest.approx(100 + 60 / 3.6 - 0.4, abs=0.1)
    assert ing["rss_end_mib"] == pytest.approx(149.6) and ing["rss_max_mib"] == pytest.approx(150.4)
    assert abs(ing["slope_mib_per_min"]) < 0.2 and ing["memory"] == "memory flat"
    assert ing["cpu_mean_cores"] == pytest.approx(0.5)
    feat = rows["features"]
    assert feat["slope_mib_per_min"] == pytest.approx(3.0, abs=1e-6)
    assert feat["floor_slope_mib_per_min"] == pytest.approx(3.0, abs=1e-6)
    assert feat["memory"] == "memory grows 3.00 MiB/min (floor)"
    # the threshold is the caller's
    assert {r["name"]: r["memory"] for r in soak.summarise(samples, flat_mib_per_min=5.0)["memory"]}["features"] \
        == "memory flat"


def test_floor_is_each_minutes_lowest_reading_of_the_stretch():
    pts = [(float(t), float(t % 60)) for t in range(300, 601, 10)]  # a sawtooth: 0 at each minute's start
    lows = soak.floor_points(pts, 300.0, 600.0)
    assert lows == [(300.0, 0.0), (360.0, 0.0), (420.0, 0.0), (480.0, 0.0), (540.0, 0.0)]  # t=600 joins the last
    assert soak.floor_points(pts, 300.0, 330.0) == [(300.0, 0.0)]  # less than a minute: one stretch


def test_transient_peaks_are_told_apart_from_memory_kept():
    # rl_feedback-like: a floor of 900 MiB with a growing 2-reading peak every 2 minutes;
    # leaky: the same peaks on a floor that rises 5 MiB/min
    def peaks(t, base):
        return base + (100 + t) if int(t) % 120 in (90, 100) else base

    samples = _samples(rss={"peaky": lambda t: peaks(t, 900.0), "leaky": lambda t: peaks(t, 900 + 5 * t / 60)})
    rows = {r["name"]: r for r in soak.summarise(samples)["memory"]}
    assert rows["peaky"]["slope_mib_per_min"] > 1.0 and rows["peaky"]["floor_slope_mib_per_min"] == pytest.approx(0.0)
    assert rows["peaky"]["memory"].startswith("floor flat, peaks (+")
    assert rows["leaky"]["floor_slope_mib_per_min"] == pytest.approx(5.0, abs=0.3)
    assert rows["leaky"]["memory"].startswith("memory grows 5.")
    assert rows["peaky"]["rss_max_mib"] == pytest.approx(900 + 100 + 580)  # the peak at 580 s


def test_a_short_run_has_no_one_minute_reading_and_no_verdict_without_a_second_half():
    s = soak.summarise(_samples(n=2, rss={"redis": lambda t: 10.0}))
    (row,) = s["memory"]
    assert row["rss_1min_mib"] is None and row["slope_mib_per_min"] is None
    assert row["memory"] == "too few samples in the second half"


def test_lag_bounded_when_it_comes_back_near_zero_in_the_last_quarter():
    # recpilot-ingest: bursts up to 3,000 every minute, back to 40 between them;
    # recpilot-features: falls behind for good (grows 100 messages/s)
    lag = {"recpilot-ingest": lambda t: 3000 if int(t) % 60 == 30 else 40,
           "recpilot-features": lambda t: int(100 * t)}
    s = soak.summarise(_samples(lag=lag), after_drain={"recpilot-ingest": 0, "recpilot-features": 12_000})
    rows = {r["group"]: r for r in s["lag"]}
    ing, feat = rows["recpilot-ingest"], rows["recpilot-features"]
    assert ing["lag_max"] == 3000 and ing["lag_end"] == 40 and ing["lag_min_last_quarter"] == 40
    assert ing["lag_after_drain"] == 0 and ing["lag"] == "lag bounded"
    assert feat["lag_max"] == 60_000 and feat["lag_end"] == 60_000 and feat["lag_min_last_quarter"] == 45_000
    assert feat["slope_per_min"] == pytest.approx(6000.0)
    assert feat["lag"].startswith("lag growing")
    assert soak.summarise(_samples(lag=lag), lag_near_zero=50_000)["lag"][0]["lag"] == "lag bounded"


def test_a_group_read_only_sometimes_is_judged_on_its_readings():
    lag = {"g": lambda t: None if t < 300 else 10}
    (row,) = soak.summarise(_samples(lag=lag))["lag"]
    assert row["samples"] == 31 and row["lag_max"] == 10 and row["lag"] == "lag bounded"


def test_simulator_and_load_figures():
    s = soak.summarise(_samples(n=4))
    assert s["simulator"] == {"steps_per_s_mean": 250.0, "events_per_s_mean": 200.0, "recommend_per_s_mean": 30.0, "ctr_mean": 0.02}
    assert s["load1"] == {"min": 2.0, "max": 3.0, "mean": 2.5}
    assert s["thresholds"] == {"flat_mib_per_min": soak.FLAT_MIB_PER_MIN, "lag_near_zero": soak.LAG_NEAR_ZERO}
    assert soak.summarise([])["memory"] == [] and soak.summarise([])["load1"] is None


def test_table_has_a_row_and_a_verdict_line_per_component_and_group():
    samples = _samples(rss={"kafka": lambda t: 400.0, "simulator": lambda t: 90 + 1.5 * t / 60},
                       lag={"recpilot-ingest": lambda t: 5})
    text = soak.format_tables(soak.summarise(samples, {"recpilot-ingest": 0}))
    lines = text.splitlines()
    assert "| kafka | 400.0 | 400.0 | 400.0 | 400.0 | +0.00 | +0.00 | 0.50 | memory flat |" in lines
    assert any(line.startswith("| simulator | 90.0 | 91.5 | 105.0 | 105.0 | +1.50 | +1.50 |") for line in lines)
    assert "| recpilot-ingest | 5 | 5 | 0 | 5 | lag bounded |" in lines
    assert lines[-3:] == ["kafka: memory flat", "simulator: memory grows 1.50 MiB/min (floor)", "recpilot-ingest: lag bounded"]


def test_fresh_home_refuses_a_used_one(tmp_path):
    from recpilot.errors import InvalidArgument

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "kafka").mkdir()
    with pytest.raises(InvalidArgument, match="not empty"):
        soak._fresh_home(str(tmp_path / "used"))
    home, temporary = soak._fresh_home(str(tmp_path / "new"))
    assert home == tmp_path / "new" and home.is_dir() and not temporary


def test_a_reader_read_only_after_the_drain_has_a_row_of_its_own():
    s = soak.summarise(_samples(n=3, lag={"recpilot-ingest": lambda t: 3}),
                       after_drain={"recpilot-ingest": 0, soak.LEARNER: 12, soak.MONITOR_REWARDS: 2_400})
    rows = {r["group"]: r for r in s["lag"]}
    assert rows[soak.LEARNER]["samples"] == 0 and rows[soak.LEARNER]["lag_after_drain"] == 12
    assert rows[soak.LEARNER]["lag"] == "caught up after the drain"
    assert rows[soak.MONITOR_REWARDS]["lag"] == "2,400 behind after the drain"
    assert rows["recpilot-ingest"]["lag"] == "lag bounded"


def test_from_json_prints_the_tables_again_with_new_thresholds(tmp_path, capsys):
    import argparse
    import json

    samples = _samples(rss={"ingest": lambda t: 60 + 2 * t / 60}, lag={"recpilot-ingest": lambda t: 3})
    result = {"command": "recpilot bench soak --minutes 10", "rate": 150.0, "minutes": 10.0, "up_s": 80.0,
              "machine": {"cores": 2, "cpu": "c", "os": "o", "python": "3.11", "load_average": [1.0, 2.0, 3.0]},
              "machine_end": {"cores": 2, "cpu": "c", "os": "o", "python": "3.11", "load_average": [4.0, 5.0, 6.0]},
              "recommend": {"calls": 10, "failures": 0, "p50_ms_last_20000": 5.0, "p99_ms_last_20000": 9.0},
              "events": {"produced": 5, "accepted": 5, "rejected": 0, "duplicates": 0, "lost": 0},
              "lag_after_drain": {"recpilot-ingest": 0}, "summary": soak.summarise(samples), "samples": samples}
    path = tmp_path / "soak.json"
    path.write_text(json.dumps(result))
    args = argparse.Namespace(from_json=str(path), flat_mib_per_min=3.0, lag_near_zero=500, plot="", json=None)
    assert soak.run(args) == 0
    out = capsys.readouterr().out
    assert "ingest: memory flat" in out  # 2 MiB/min is under the new threshold of 3
    assert "| recpilot-ingest | 3 | 3 | 0 | 3 | lag bounded |" in out
    assert "events: produced 5, accepted by ingest 5, rejected 0, duplicates 0, lost 0" in out
    assert "load average 1.00 2.00 3.00; at the end: " in out
