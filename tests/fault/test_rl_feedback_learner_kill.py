"""kill -9 of rl_feedback while its policy learner works through the rewards, restart: the learner
resumes from its checkpoint (its networks, replay buffer and the rewards offsets it had learned to)
and learns from every reward exactly once: those in the checkpoint, then those after its offsets."""

from __future__ import annotations

import json
import re
import signal

import numpy as np
import pytest
import torch

from recpilot.featurespec import DENSE_FEATURES
from recpilot.kafka import flush_or_raise, producer
from recpilot.pb import events_pb2
from recpilot.stack.process import http_get
from tests.support.rl_feedback import rl_feedback_process, setup_topics

pytestmark = pytest.mark.timeout(180)


def learned(proc) -> int:
    """The learner's rows (rewards learned from, checkpoint included), from its /metrics."""
    try:
        status, body = http_get(f"http://{proc.address}/metrics")
    except OSError:
        return -1
    found = re.search(r"^recpilot_rl_learner_rows (\S+)$", body, re.M) if status == 200 else None
    return int(float(found.group(1))) if found else -1


def test_kill_9_learner_resumes_from_its_checkpoint_and_learns_each_reward_once(stack, platform_settings, unique,
                                                                                tmp_path, wait_until):
    p = platform_settings
    names = setup_topics(p, f"test-rl-learn-{unique}")
    rng = np.random.default_rng(3)
    n = 10_000
    prod = producer(p)
    for i in range(n):
        rw = events_pb2.Reward(request_id=f"r{i // 10}", user_id=f"u{i // 10 % 97}", item_id=f"i{i}",
                               position=i % 10 + 1, reward=float(rng.random() < 0.1), score=float(rng.random()),
                               session_id=f"s{i // 100}", impression_ts_ms=1_000 + i // 10)
        rw.dense.extend(rng.random(len(DENSE_FEATURES)).tolist())
        prod.produce(names["rewards"], key=rw.user_id.encode(), value=rw.SerializeToString())
    flush_or_raise(prod)
    ckpt = tmp_path / "learner" / "learner.ckpt"
    settings = {"learner_enabled": "true", "learner_state_dir": str(ckpt.parent), "learner_batch": 250,
                "learner_updates_per_reward": 0.5, "learner_checkpoint_every_rewards": 1000,
                "learner_every_rewards": 10**9, "learner_every_s": 10**6}
    env = {"RECPILOT_MODEL_REPOSITORY": str(tmp_path / "models"), "RECPILOT_DEPLOY_TOPIC": f"test-rl-learn-ctl-{unique}"}
    group = f"test-rl-learn-{unique}"
    procs = []
    try:
        proc = rl_feedback_process(names, group, tmp_path / "rl-1.log", env=env, **settings).start()
        procs.append(proc)
        proc.wait_ready(60)
        wait_until(lambda: ckpt.exists() and learned(proc) >= 2000, 90,
                   lambda: f"a learner checkpoint:\n{proc.log_tail(30)}", 0.05)
        proc.kill9()
        assert proc.returncode == -signal.SIGKILL
        at_ckpt = torch.load(ckpt, weights_only=False)
        ckpt_rows = at_ckpt["learner"]["counters"]["rows"]
        assert 0 < ckpt_rows < n, "the kill did not land mid-stream"

        proc = rl_feedback_process(names, group, tmp_path / "rl-2.log", env=env, **settings).start()
        procs.append(proc)
        proc.wait_ready(60)
        wait_until(lambda: learned(proc) >= n, 120, lambda: f"learner rows {learned(proc)} of {n}:\n{proc.log_tail(20)}",
                   0.5)
        assert learned(proc) == n  # none learned twice, none skipped
        assert proc.stop(30) == 0
        restored = [json.loads(line) for line in proc.log_tail(400).splitlines()
                    if "learner restored from its checkpoint" in line]
        assert restored and restored[0]["rows"] == ckpt_rows
        assert restored[0]["updates"] == at_ckpt["learner"]["counters"]["updates"] > 0
    finally:
        for pr in procs:
            pr.kill9()
