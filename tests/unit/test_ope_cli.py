"""`recpilot ope` on a logged-slates file and policy versions written into a temporary repository."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recpilot.cli import main
from recpilot.rl import slate
from recpilot.rl.features import POLICY_FEATURES
from recpilot.rl.logged import LoggedSlates, ValuePolicy
from recpilot.rl.logs import to_file
from recpilot.rl.ope import evaluate

M, K = 6, 2
SCORE = POLICY_FEATURES.index("ranker_score")


def _logs(n=120, seed=0) -> LoggedSlates:
    """Uniformly logged slates over pools with random inputs; clicks favour a high first input."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, M, len(POLICY_FEATURES))).astype(np.float32)
    shown = np.zeros((n, K), np.int64)
    prop = np.zeros((n, K))
    reward = np.zeros((n, K))
    for i in range(n):
        idx, p = slate.sample(np.zeros(M), K, slate.Exploration("uniform"), rng)
        shown[i], prop[i] = idx, p
        reward[i] = rng.random(K) < 1 / (1 + np.exp(-2 * x[i, idx, 0]))
    return LoggedSlates(x, np.ones((n, M), bool), shown, prop, reward, list(POLICY_FEATURES), source="test")


def _first_input_policy(torch):
    class FirstInput(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, 0] * 2.0

    return FirstInput()


@pytest.fixture
def repo_with_policy(tmp_path):
    torch = pytest.importorskip("torch")
    from recpilot.models.repository import ModelRepository
    from recpilot.rl.artifact import write_policy_version

    repo = ModelRepository(tmp_path / "repo")
    v = write_policy_version(repo, "ranker", _first_input_policy(torch), list(POLICY_FEATURES),
                             slate.Exploration.parse("epsilon_greedy:0.2"), pool_size=M, gamma=0.0, training={})
    assert v == "1"
    return repo


def _run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ope_of_a_policy_version_on_a_logs_file(tmp_path, repo_with_policy, capsys):
    logs = _logs()
    path = to_file(logs, tmp_path / "logs.npz")
    rc, out, err = _run(capsys, ["ope", "--logs", str(path), "--policy", "1", "--repository", str(repo_with_policy.root),
                                 "--json", "--n-boot", "50"])
    assert rc == 0, err
    rep = json.loads(out)
    # the same target evaluated directly: values of the first input (x2), the version's epsilon-greedy
    want = evaluate(logs, ValuePolicy(lambda x: 2.0 * x[:, 0], slate.Exploration.parse("epsilon_greedy:0.2")), n_boot=50)
    for e in ("ips", "snips", "dm", "dr"):
        assert rep["estimates"][e]["value"] == pytest.approx(want.estimates[e].value, rel=1e-5)
        assert rep["estimates"][e]["lo"] == pytest.approx(want.estimates[e].lo, rel=1e-5)
    assert rep["target"] == "ranker.policy/1 (epsilon_greedy:0.2)" and rep["decisions"] == 120
    # clicks favour a high first input: the policy beats the logs
    assert rep["estimates"]["dr"]["value"] > rep["logged_value"]
    # --exploration overrides the version's rule; the text report names it
    rc, out, _ = _run(capsys, ["ope", "--logs", str(path), "--policy", "1", "--repository", str(repo_with_policy.root),
                               "--exploration", "greedy", "--estimators", "ips,dr", "--n-boot", "20"])
    assert rc == 0 and "ranker.policy/1 (greedy)" in out and "dr" in out and "snips" not in out
    # --refit: the same point estimates, DR's interval from refitted reward models
    rc, out, err = _run(capsys, ["ope", "--logs", str(path), "--policy", "1", "--repository", str(repo_with_policy.root),
                                 "--json", "--n-boot", "50", "--refit"])
    assert rc == 0, err
    refit = json.loads(out)
    want = evaluate(logs, ValuePolicy(lambda x: 2.0 * x[:, 0], slate.Exploration.parse("epsilon_greedy:0.2")), n_boot=50,
                    refit=True)
    assert "refit" in refit["reward_model"]
    assert refit["estimates"]["dr"]["value"] == pytest.approx(rep["estimates"]["dr"]["value"], rel=1e-9)
    assert refit["estimates"]["dr"]["lo"] == pytest.approx(want.estimates["dr"].lo, rel=1e-5)


def test_builtin_targets(tmp_path, capsys):
    logs = _logs()
    path = to_file(logs, tmp_path / "logs.npz")
    rc, out, _ = _run(capsys, ["ope", "--logs", str(path), "--policy", "uniform", "--json", "--n-boot", "20"])
    rep = json.loads(out)
    # the logs are uniform: the uniform target's IPS is the logged average exactly
    assert rc == 0 and rep["estimates"]["ips"]["value"] == pytest.approx(rep["logged_value"])
    rc, out, _ = _run(capsys, ["ope", "--logs", str(path), "--policy", "ranker-order", "--json", "--k", "1", "--n-boot", "20"])
    rep = json.loads(out)
    want = evaluate(logs, ValuePolicy(lambda x: x[:, SCORE], slate.GREEDY), k=1, n_boot=20)
    assert rc == 0 and rep["k"] == 1
    assert rep["estimates"]["ips"]["value"] == pytest.approx(want.estimates["ips"].value)
    # fit:PATH: a value policy from the reward model fitted on other logs
    other = to_file(_logs(seed=1), tmp_path / "other.npz")
    rc, out, _ = _run(capsys, ["ope", "--logs", str(path), "--policy", f"fit:{other}", "--json", "--n-boot", "20"])
    rep = json.loads(out)
    assert rc == 0 and rep["target"].startswith("reward model fitted on test")
    assert rep["estimates"]["ips"]["value"] > rep["logged_value"]


def test_refusals_are_clear(tmp_path, repo_with_policy, capsys):
    logs = _logs()
    path = to_file(logs, tmp_path / "logs.npz")
    other = LoggedSlates(logs.x[:, :, :3].copy(), logs.mask, logs.shown, logs.propensity, logs.reward, ["a", "b", "c"])
    opath = to_file(other, tmp_path / "other.npz")
    repo = str(repo_with_policy.root)
    cases = [
        (["--logs", str(opath), "--policy", "1", "--repository", repo], 1, "do not"),
        (["--logs", str(opath), "--policy", "ranker-order"], 1, "ranker_score"),
        (["--logs", str(path), "--policy", "7", "--repository", repo], 1, "no version '7'"),
        (["--logs", str(path), "--policy", "best"], 2, "unknown policy"),
        (["--logs", str(path), "--policy", "uniform", "--estimators", "ips,foo"], 2, "unknown estimators"),
        (["--logs", str(path), "--policy", "1", "--repository", repo, "--exploration", "boltzmann"], 2, "boltzmann"),
        (["--logs", str(tmp_path / "none.npz"), "--policy", "uniform"], 1, "not found"),
        (["--logs", "obd:bts+random", "--policy", "uniform"], 2, "one logging policy"),
    ]
    for argv, code, msg in cases:
        rc, _, err = _run(capsys, ["ope", *argv])
        assert rc == code and msg in err, (argv, rc, err)


def test_save_writes_the_logs_read(tmp_path, capsys):
    path = to_file(_logs(n=20), tmp_path / "logs.npz")
    rc, _, _ = _run(capsys, ["ope", "--logs", str(path), "--policy", "uniform", "--save", str(tmp_path / "copy.npz"),
                             "--n-boot", "5"])
    from recpilot.rl.logs import from_file

    assert rc == 0 and from_file(tmp_path / "copy.npz").n == 20
