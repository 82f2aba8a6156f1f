"""`recpilot run --headless`: the story on a fresh home and its own ports, short timed steps. The
JSON summary must show every step from `up` to `recovery` reached (the learned policy's step may
end without a rise in so short a run: its CTR is reported, not asserted), the CtrRegression alert
delivered to the story's webhook for the injected version, the monitor's executed rollback of it,
production back on another version, and zero lost events; `recpilot down` at the end leaves
nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PORTS = {
    "RECPILOT_KAFKA_PORT": "28392", "RECPILOT_KAFKA_CONTROLLER_PORT": "28393", "RECPILOT_REDIS_PORT": "28379",
    "RECPILOT_ALERTMANAGER_PORT": "28395", "RECPILOT_INGEST_HTTP_PORT": "28301", "RECPILOT_FEATURES_HTTP_PORT": "28302",
    "RECPILOT_INFERENCE_HTTP_PORT": "28303", "RECPILOT_INFERENCE_GRPC_PORT": "28351",
    "RECPILOT_RL_FEEDBACK_HTTP_PORT": "28304", "RECPILOT_MONITOR_HTTP_PORT": "28305",
}


def test_story_headless_reaches_the_rollback_and_loses_nothing(tmp_path):
    env = dict(os.environ, RECPILOT_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", **PORTS)
    try:
        res = subprocess.run([sys.executable, "-m", "recpilot.cli", "run", "--headless", "--duration", "40"],
                             env=env, capture_output=True, text=True, timeout=900)
    finally:
        subprocess.run([sys.executable, "-m", "recpilot.cli", "down"], env=env, capture_output=True, timeout=180)
    assert res.stdout.strip(), res.stderr[-4000:]
    s = json.loads(res.stdout)
    status = {st["name"]: st["status"] for st in s["steps"]}
    for name in ("up", "baseline", "train", "canary", "inject", "alert", "rollback", "recovery", "drain"):
        assert status[name] == "done", (name, s["steps"], res.stderr[-3000:])
    bad = s["versions"]["bad"]
    assert bad and bad != s["versions"]["trained"]
    assert any(a["alertname"] == "CtrRegression" and a["status"] == "firing" and a["labels"].get("version") == bad
               for a in s["alerts"]), s["alerts"]
    assert any(a["action"] == "rollback" and a["outcome"] == "executed" and str(a["version"]) == bad
               for a in s["actions"]), s["actions"]
    assert s["ctr"]["bad_model"] < s["ctr"]["with_policy"]
    ev = s["events"]
    assert ev["produced"] > 0 and ev["delivery_failed"] == 0
    assert ev["lost"] == 0 and ev["accepted"] + ev["rejected"] + ev["duplicates"] == ev["produced"], ev
    st = subprocess.run([sys.executable, "-m", "recpilot.cli", "status", "--json"], env=env, capture_output=True,
                        text=True, timeout=60)
    assert not any(c["running"] for c in json.loads(st.stdout)["components"])
