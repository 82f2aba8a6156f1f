"""Training real torch / TensorFlow rankers on tiny data (a few hundred rows, a few epochs), with a
model repository in tmp_path: the version written, export and reload through the serving loader
with the same scores, determinism, early stopping, learning the signal, the item-prior model, a
failing export leaving nothing, and the `train` / `tune` commands end to end. What training reads
(datasets, bad inputs) is checked without training in tests/unit/test_train_inputs.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recpilot import featurespec
from recpilot.cli import main
from recpilot.models import data as D
from recpilot.models.loader import load_model
from recpilot.models.repository import ModelRepository
from recpilot.models.train import Production, TrainError, fit, train_and_register

HP = {"epochs": 2, "batch_size": 128, "embedding_dim": 8, "bottom": [16], "top": [16], "lr": 5e-3}


@pytest.fixture(scope="module", params=["torch", "tensorflow"])
def trained(request, small_ds, tmp_path_factory):
    repo = ModelRepository(tmp_path_factory.mktemp(f"repo-{request.param}"))
    report = train_and_register(small_ds, request.param, name="ranker", hp=HP, seed=3, repository=repo,
                                production=Production(note="none in this test"))
    return request.param, repo, report


def test_train_writes_a_valid_version(trained, small_ds):
    fw, repo, report = trained
    assert report.version == "1"
    assert repo.versions("ranker") == ["1"]
    meta = repo.meta("ranker", "1")
    assert meta["framework"] == fw
    assert meta["artifact"] == ("model.pt" if fw == "torch" else "saved_model")
    assert meta["inputs"] == [{"name": "dense", "datatype": "FP32", "shape": [-1, len(featurespec.DENSE_FEATURES)]},
                              {"name": "ids", "datatype": "INT64", "shape": [-1, len(featurespec.ID_FEATURES)]}]
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    assert meta["feature_set"] == "recpilot"
    assert meta["dense_features"] == list(featurespec.DENSE_FEATURES)
    assert meta["id_features"] == [[n, b] for n, b in featurespec.ID_FEATURES]
    tr = meta["training"]
    assert tr["rows"] + tr["holdout"]["rows"] == len(small_ds)
    assert tr["data_window"]["end_ms"] <= tr["holdout"]["data_window"]["start_ms"]  # time-based holdout
    assert len(tr["epochs"]) == 2 and tr["seed"] == 3 and tr["best_epoch"] in (1, 2)
    assert tr["fit_rows"] + tr["validation_rows"] == tr["rows"]
    assert tr["export_check_max_abs_diff"] <= 1e-5
    m = meta["metrics"]
    assert 0.0 <= m["auc"] <= 1.0 and m["auc_ci"][0] <= m["auc_ci"][1]
    assert m["logloss"] > 0 and m["baseline"]["auc"] is not None
    assert m["production"] is None and m["production_note"] == "none in this test"
    ref = meta["reference"]
    assert set(ref) == set(featurespec.DENSE_FEATURES) | {"score"}
    assert sum(ref["item_ctr"]["histogram"]["counts"]) == len(small_ds)
    assert 0.0 < ref["score"]["mean"] < 1.0


def test_exported_model_reloads_with_the_same_scores(trained, small_ds):
    fw, repo, report = trained
    meta = repo.meta("ranker", "1")
    loaded = load_model(repo.path("ranker", "1"), meta, device="cpu")
    assert (loaded.name, loaded.version, loaded.framework, loaded.device) == ("ranker", "1", fw, "cpu")
    # The model scores the fixture far from constant, and the reload matches the in-memory model.
    got = loaded.predict(small_ds.dense, small_ds.ids)
    assert got.dtype == np.float32 and got.shape == (len(small_ds),)
    assert np.all((got > 0) & (got < 1)) and got.std() > 1e-4
    # the in-memory model that was exported gives the same scores, within 1e-5
    expected = report.ranker.predict(small_ds.dense, small_ds.ids)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_training_is_deterministic_with_a_seed(small_ds, framework):
    train, _ = small_ds.split_time(0.2)
    a = fit(framework, train, HP, seed=11).ranker.predict(small_ds.dense[:50], small_ds.ids[:50])
    b = fit(framework, train, HP, seed=11).ranker.predict(small_ds.dense[:50], small_ds.ids[:50])
    c = fit(framework, train, HP, seed=12).ranker.predict(small_ds.dense[:50], small_ds.ids[:50])
    np.testing.assert_array_equal(a, b)
    assert np.max(np.abs(a - c)) > 1e-6


def test_early_stopping_keeps_the_best_validation_epoch(small_ds):
    """With a huge learning rate the model overfits fast; the kept weights are the best epoch's."""
    from recpilot.models.evaluate import logloss

    train, _ = small_ds.split_time(0.2)
    fit_train, val = train.split_time(0.25)
    res = fit("torch", fit_train, {**HP, "epochs": 6, "lr": 0.05, "patience": 2}, seed=0, val=val)
    losses = [h["val_logloss"] for h in res.history]
    best = int(np.argmin(losses)) + 1
    assert res.best_epoch == best
    assert logloss(val.labels, res.ranker.predict(val.dense, val.ids)) == pytest.approx(losses[best - 1], rel=1e-5)
    if best < 5:
        assert len(res.history) == best + 2  # stopped after `patience` epochs without improvement


def test_learns_the_signal():
    """On the synthetic click model the ranker must rank clearly better than chance on the holdout."""
    from recpilot.models.evaluate import auc

    ds = D.examples_from_impressions(D.synthetic_impressions(1500, seed=8, n_users=200, n_items=100))
    train, test = ds.split_time(0.3)
    res = fit("torch", train, {**HP, "epochs": 4}, seed=0)
    assert auc(test.labels, res.ranker.predict(test.dense, test.ids)) > 0.6


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_item_prior_model_starts_at_the_prior_and_exports(framework, tmp_path, write_obd):
    """Wide & deep (item_prior): untrained, the score is the item_ctr column itself; trained, the export
    reloads within 1e-5 and model.json keeps its signature."""
    from recpilot.models.train import make_ranker

    ds = D.load_obd(write_obd(tmp_path / "obd", rows=120))
    j = D.OBD_DENSE_FEATURES.index("item_ctr")
    r = make_ranker(framework, ds, {**HP, "item_prior": True}, seed=0)
    np.testing.assert_allclose(r.predict(ds.dense, ds.ids), ds.dense[:, j], rtol=1e-5)
    plain = make_ranker(framework, ds, HP, seed=0)  # default: no prior
    assert not np.allclose(plain.predict(ds.dense, ds.ids), ds.dense[:, j], rtol=1e-3)
    repo = ModelRepository(tmp_path / "repo")
    report = train_and_register(ds, framework, name="ranker-obd", hp={**HP, "item_prior": True, "embedding_l2": 1e-3},
                                seed=1, repository=repo, holdout_fraction=0.25)
    meta = repo.meta("ranker-obd", report.version)
    assert meta["feature_set"] == "obd" and meta["dense_features"] == list(D.OBD_DENSE_FEATURES)
    assert meta["inputs"][0]["shape"] == [-1, len(D.OBD_DENSE_FEATURES)]
    assert meta["training"]["hyperparameters"]["item_prior"] is True
    assert meta["training"]["export_check_max_abs_diff"] <= 1e-5
    # with a prior, early stopping also scores the untrained model (epoch 0, the prior alone)
    assert meta["training"]["validation_rows"] > 0 and meta["training"]["epochs"][0]["epoch"] == 0
    loaded = load_model(repo.path("ranker-obd", report.version), meta, device="cpu")
    np.testing.assert_allclose(loaded.predict(ds.dense, ds.ids), report.ranker.predict(ds.dense, ds.ids), atol=1e-5, rtol=0)


def test_failed_export_leaves_nothing(small_ds, tmp_path, monkeypatch):
    """If the exported artifact does not reproduce the scores, the version is not published."""
    import recpilot.models.train as T

    def bad_check(*a, **k):
        raise TrainError("exported model does not reproduce the trained scores (simulated)")

    monkeypatch.setattr(T, "export_check", bad_check)
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(TrainError, match="does not reproduce"):
        train_and_register(small_ds, "torch", hp={**HP, "epochs": 1}, repository=repo)
    assert repo.versions("ranker") == []
    assert [p.name for p in (tmp_path / "repo").iterdir() if not p.name.startswith(".")] == []


def test_cli_train_then_second_version_compared_with_production(small_ds, tmp_path, monkeypatch, capsys):
    """End to end through the CLI on a CSV: version 1, then version 2 compared with version 1."""
    df = D.synthetic_impressions(600, seed=5, n_users=100, n_items=60)
    path = tmp_path / "imps.csv"
    df.to_csv(path, index=False)
    repo = tmp_path / "repo"
    monkeypatch.setenv("RECPILOT_MODEL_REPOSITORY", str(repo))
    args = ["train", "--framework", "torch", "--data", str(path), "--epochs", "1", "--batch-size", "128",
            "--embedding-dim", "8", "--quiet"]
    assert main(args) == 0
    assert main(args + ["--production-version", "1", "--json"]) == 0
    out = capsys.readouterr().out
    meta = json.loads(out[out.index("{"):])
    assert meta["version"] == "2"
    prod = meta["metrics"]["production"]
    assert prod["version"] == "1"
    # same data, same seed, same hyperparameters: the production model scores exactly like the new one
    assert prod["auc"] == pytest.approx(meta["metrics"]["auc"], abs=1e-6)
    assert prod["auc_diff"] == pytest.approx(0.0, abs=1e-6) and prod["auc_diff_ci"] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert "scores" not in prod                      # the scores served the paired difference only
    base = meta["metrics"]["baseline"]
    assert base["auc_diff"] == pytest.approx(meta["metrics"]["auc"] - base["auc"])
    assert base["auc_diff_ci"][0] <= base["auc_diff"] <= base["auc_diff_ci"][1]
    assert not any("overlaps" in n for n in meta["metrics"]["notes"])
    # a model trained on a later window (overlapping this holdout) is flagged as optimistic
    later = D.synthetic_impressions(600, seed=5, n_users=100, n_items=60)
    later["timestamp_ms"] += 86_400_000
    path2 = tmp_path / "later.csv"
    later.to_csv(path2, index=False)
    assert main(["train", "--framework", "torch", "--data", str(path2), "--epochs", "1", "--quiet",
                 "--no-production"]) == 0
    capsys.readouterr()
    assert main(args + ["--production-version", "3", "--json", "--dry-run"]) == 0
    out = capsys.readouterr().out
    meta3 = json.loads(out[out.index("{"):])
    assert meta3["metrics"]["production"]["version"] == "3"
    assert any("overlaps this holdout" in n for n in meta3["metrics"]["notes"])
    assert ModelRepository(repo).versions("ranker") == ["1", "2", "3"]  # the --dry-run wrote nothing


def test_cli_tune_reports_the_best_trial_and_registers_it(tmp_path, monkeypatch, capsys):
    df = D.synthetic_impressions(1500, seed=9, n_users=150, n_items=80)
    path = tmp_path / "imps.parquet"
    df.to_parquet(path)
    repo = tmp_path / "repo"
    monkeypatch.setenv("RECPILOT_MODEL_REPOSITORY", str(repo))
    rc = main(["tune", "--framework", "torch", "--data", str(path), "--trials", "2", "--epochs", "1",
               "--register", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    trials = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(trials) == 2
    best_line = next(line for line in out.splitlines() if line.startswith("best trial "))
    vals = [float(t.split("val_auc ")[1].split()[0]) for t in trials]
    assert f"validation auc {max(vals):.4f}" in best_line
    assert "the holdout" in out and "is not looked at" in out
    meta = ModelRepository(repo).meta("ranker", "1")
    assert meta["training"]["hyperparameters"]["epochs"] == 1
