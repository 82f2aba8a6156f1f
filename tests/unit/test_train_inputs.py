"""Training on a small fixture, export, reload through the serving loader, and bad inputs.

Real torch / TensorFlow, tiny data (a few hundred rows, 2 epochs), a model repository in tmp_path.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from recpilot import featurespec
from recpilot.models import data as D
from recpilot.models.loader import load_model
from recpilot.models.repository import ModelRepository
from recpilot.models.train import Production, TrainError, fit, train_and_register

HP = {"epochs": 2, "batch_size": 128, "embedding_dim": 8, "bottom": [16], "top": [16], "lr": 5e-3}


@pytest.fixture(scope="module")
def small_ds():
    df = D.synthetic_impressions(800, seed=7, n_users=200, n_items=100)
    ds = D.examples_from_impressions(df, source="fixture")
    assert ds.positives > 20 and len(ds) - ds.positives > 20
    return ds


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


# ---------------------------------------------------------------------------------------------
# datasets


def test_raw_events_become_point_in_time_examples():
    ev = [
        {"event_id": "1", "user_id": "u1", "session_id": "s1", "event_type": "VIEW", "item_id": "a",
         "timestamp_ms": 1_000, "context": {"category": "shoes"}, "price": 10.0},
        {"event_id": "2", "user_id": "u1", "session_id": "s1", "event_type": "CLICK", "item_id": "a",
         "timestamp_ms": 2_000, "context": {"category": "shoes"}},
        {"event_id": "3", "user_id": "u1", "session_id": "s1", "event_type": "VIEW", "item_id": "b",
         "timestamp_ms": 3_000, "context": {"category": "hats"}},
        {"event_id": "4", "user_id": "u2", "session_id": "s2", "event_type": "VIEW", "item_id": "a",
         "timestamp_ms": 4_000, "context": {"category": "shoes"}},
        # a click long after the view (beyond the attribution window) does not label it
        {"event_id": "5", "user_id": "u2", "session_id": "s2", "event_type": "CLICK", "item_id": "a",
         "timestamp_ms": 4_000 + 3_600_000, "context": {"category": "shoes"}},
    ]
    ds = D.examples_from_events(ev, attribution_ms=60_000)
    assert list(ds.items) == ["a", "b", "a"]
    assert list(ds.labels) == [1.0, 0.0, 0.0]
    names = list(featurespec.DENSE_FEATURES)
    views = ds.dense[:, names.index("item_log_views")]
    # item a had no views before the first example and one view + one click before the third
    assert views[0] == 0.0 and views[2] == pytest.approx(np.log1p(1))
    assert ds.dense[2, names.index("item_log_clicks")] == pytest.approx(np.log1p(1))
    # the features match what build_batch gives for the store state at that moment
    store = featurespec.OfflineFeatureStore()
    for e in ev[:3]:
        store.apply(e)
    d, i = featurespec.build_batch(store.user("u2"), [store.item("a", 4_000)], 4_000)
    np.testing.assert_allclose(ds.dense[2], d[0])
    np.testing.assert_array_equal(ds.ids[2], i[0])


def test_events_table_roundtrip(tmp_path):
    df = pd.DataFrame({
        "event_id": ["1", "2", "3"], "user_id": ["u", "u", "u"], "session_id": ["s", "s", "s"],
        "event_type": ["VIEW", "CLICK", "VIEW"], "item_id": ["a", "a", "b"], "timestamp_ms": [1, 2, 3],
        "category": ["x", "x", "y"], "price": [1.0, None, 2.0],
    })
    path = tmp_path / "events.csv"
    df.to_csv(path, index=False)
    ds = D.load_dataset(str(path), D.TrainSettings())
    assert ds.feature_set == "recpilot" and list(ds.labels) == [1.0, 0.0]
    assert ds.ids[0, 2] == featurespec.stable_hash("x", featurespec.ID_FEATURES[2][1])


def test_impression_snapshot_as_logged_by_inference():
    from recpilot.pb import events_pb2

    imp = events_pb2.Impression(request_id="r1", user_id="u1", timestamp_ms=5)
    imp.items.add(item_id="a", position=1, score=0.3)
    imp.items.add(item_id="b", position=2, score=0.2)
    imp.features.update({"1:item_ctr": 0.25, "2:item_ctr": 0.5, "2:item_log_views": 3.0, "user:events": 9.0})
    fallback = events_pb2.Impression(request_id="r0", user_id="u1", timestamp_ms=4, fallback=True)
    fallback.items.add(item_id="z", position=1)  # no snapshot: not an example
    rows = D.impressions_to_rows([fallback, imp], {"a": "shoes"})
    assert [(r["item_id"], r["position"], r["item_ctr"], r["category"]) for r in rows] == [
        ("a", 1, 0.25, "shoes"), ("b", 2, 0.5, "")]
    assert rows[1]["item_log_views"] == 3.0 and rows[0]["item_log_views"] == 0.0
    outcomes = [{"request_id": "r1", "item_id": "b", "event_type": "CLICK"}]
    ds = D.examples_from_impressions(pd.DataFrame(rows), outcomes)
    assert list(ds.labels) == [0.0, 1.0]
    assert list(ds.groups) == ["r1", "r1"]


def _write_obd(root, rows=30, campaign="all", nested=False):
    """A tiny OBD folder: flat (<policy>/<campaign>.csv, the sample beside the checkout) or nested
    (<policy>/<campaign>/<campaign>.csv, the dataset's own layout)."""
    rng = np.random.default_rng(0)
    for policy in ("random", "bts"):
        d = root / policy / campaign if nested else root / policy
        d.mkdir(parents=True)
        logs = pd.DataFrame({
            "timestamp": pd.date_range("2019-11-24", periods=rows, freq="min", tz="UTC").astype(str),
            "item_id": rng.integers(0, 3, rows), "position": rng.integers(1, 4, rows),
            "click": (np.arange(rows) % 7 == 0).astype(int), "propensity_score": 1 / 3,
            **{f"user_feature_{k}": [f"h{k}{x}" for x in rng.integers(0, 2, rows)] for k in range(4)},
            **{f"user-item_affinity_{k}": rng.random(rows) * (k + 1) for k in range(3)},
        })
        logs.to_csv(d / f"{campaign}.csv")
        pd.DataFrame({"item_id": [0, 1, 2], "item_feature_0": [0.1, 0.2, 0.3], "item_feature_1": ["a", "b", "c"],
                      "item_feature_2": ["d", "e", "f"], "item_feature_3": ["g", "h", "i"]}).to_csv(d / "item_context.csv")
    return root


def test_obd_features(tmp_path):
    root = _write_obd(tmp_path / "obd")
    ds = D.load_obd(root, ("random",))
    logs = pd.read_csv(root / "random" / "all.csv", index_col=0)
    assert len(ds) == 30 and ds.feature_set == "obd"
    assert ds.dense_features == D.OBD_DENSE_FEATURES
    r = 4
    item, pos = int(logs.item_id[r]), int(logs.position[r])
    assert ds.dense[r, 0] == pytest.approx([0.1, 0.2, 0.3][item])
    assert ds.dense[r, 1] == pytest.approx(logs[f"user-item_affinity_{item}"][r])
    assert list(ds.dense[r, 2:5]) == [float(pos == k) for k in (1, 2, 3)]
    assert ds.ids.shape == (30, 8) and ds.ids.max() < 1000
    assert list(ds.labels) == list(logs.click.astype(float))
    # item_ctr: the item's smoothed click rate over the earlier rows only (one row a minute, all distinct)
    j = D.OBD_DENSE_FEATURES.index("item_ctr")
    assert ds.ctr_feature == "item_ctr"
    earlier = logs.iloc[:r]
    g = (earlier.click.sum() + 1) / (r + 20)
    c, v = earlier.click[earlier.item_id == item].sum(), int((earlier.item_id == item).sum())
    assert ds.dense[r, j] == pytest.approx((c + 1) / (v + 1 / g), rel=1e-6)
    assert ds.dense[0, j] == pytest.approx(1 / 20)  # no history at all
    # epoch milliseconds: 2019-11-24T00:00Z, one row a minute
    assert ds.ts_ms[0] == 1_574_553_600_000 and ds.ts_ms[1] - ds.ts_ms[0] == 60_000
    both = D.load_dataset("obd", D.TrainSettings(obd_dir=root))
    assert len(both) == 60


def test_obd_campaigns_and_both_layouts(tmp_path):
    flat = D.load_obd(_write_obd(tmp_path / "flat"), ("random",))
    nested = D.load_obd(_write_obd(tmp_path / "nested", nested=True), ("random",))
    for name in ("dense", "ids", "labels", "ts_ms", "items"):
        np.testing.assert_array_equal(getattr(nested, name), getattr(flat, name), err_msg=name)
    root = _write_obd(tmp_path / "full", rows=40, campaign="men", nested=True)
    ds = D.load_dataset("obd/men:bts", D.TrainSettings(obd_dir=root))
    assert len(ds) == 40 and ds.extra["obd_campaign"] == "men" and ds.source.startswith("obd/men:bts ")
    assert len(D.load_dataset("obd/men", D.TrainSettings(obd_dir=root))) == 80
    assert D.parse_obd_spec("obd") == ("all", ("random", "bts"))
    assert D.parse_obd_spec("obd/women:random") == ("women", ("random",))
    for bad, msg in (("obd/kids", "unknown Open Bandit campaign 'kids'"), ("obd:greedy", "unknown Open Bandit policy"),
                     ("obd/", "bad Open Bandit spec")):
        with pytest.raises(D.DataError, match=msg):
            D.load_dataset(bad, D.TrainSettings(obd_dir=root))
    # a campaign the folder lacks: both paths tried are named, and where the three-campaign sample comes from
    with pytest.raises(D.DataError, match=r"women\.csv.*recpilot setup --obd-sample"):
        D.load_dataset("obd/women", D.TrainSettings(obd_dir=root))
    (root / "bts" / "men" / "item_context.csv").unlink()
    with pytest.raises(D.DataError, match="item_context.csv"):
        D.load_dataset("obd/men:bts", D.TrainSettings(obd_dir=root))


def test_default_model_name_names_the_obd_campaign(tmp_path):
    from recpilot.models.train_commands import _default_name

    assert _default_name(D.load_obd(_write_obd(tmp_path / "a"))) == "ranker-obd"
    assert _default_name(D.load_obd(_write_obd(tmp_path / "m", campaign="men", nested=True), campaign="men")) == "ranker-obd-men"
    assert _default_name(D.load_dataset("sim:300", D.TrainSettings())) == "ranker"


def _fake_obp_wheel(path, files):
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for f in files:
            z.writestr("obp/dataset/obd/" + f, f"content of {f}\n")
        z.writestr("obp/dataset/obd/.DS_Store", "junk")
    return path


def test_obd_sample_unpacks_only_a_wheel_with_the_pinned_digest(tmp_path):
    import hashlib

    from recpilot.models import obd_sample

    wheel = _fake_obp_wheel(tmp_path / "obp.whl", obd_sample.FILES)
    dest = tmp_path / "cache" / "obd-sample"
    dest.mkdir(parents=True)
    (dest / "keep").write_text("old")
    with pytest.raises(D.DataError, match="SHA-256 .* is not the expected"):
        obd_sample.extract(wheel, dest)
    assert (dest / "keep").read_text() == "old" and not obd_sample.present(dest)   # untouched
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    short = _fake_obp_wheel(tmp_path / "short.whl", obd_sample.FILES[:-1])
    with pytest.raises(D.DataError, match="lacks bts/women/item_context.csv"):
        obd_sample.extract(short, dest, sha256=hashlib.sha256(short.read_bytes()).hexdigest())
    assert (dest / "keep").exists()
    obd_sample.extract(wheel, dest, sha256=digest)
    assert obd_sample.present(dest) and not (dest / "keep").exists() and not (dest / ".DS_Store").exists()
    assert (dest / "random" / "men" / "men.csv").read_text() == "content of random/men/men.csv\n"
    assert [p.name for p in dest.parent.iterdir()] == ["obd-sample"]    # no staging folder left behind
    # the layout is the one load_obd reads
    assert D.obd_files(dest, "bts", "women")[0] == dest / "bts" / "women" / "women.csv"


def test_constant_scores_are_called_out():
    from recpilot.models.train import constant_score_note

    assert "same score" in constant_score_note(np.full(50, 0.0042, np.float32))
    assert constant_score_note(np.linspace(0.001, 0.002, 50)) is None
    assert constant_score_note(np.zeros(0)) is None


def test_point_in_time_ctr_by_hand():
    """Rows a@t1 (click), b@t1, a@t2, b@t3 (click), c@t3, a@t3: only strictly earlier rows count, with
    the popularity baseline's smoothing g = (C + 1) / (N + 20), item = (c + 1) / (v + 1 / g)."""
    items = np.array(["a", "b", "a", "b", "c", "a"])
    labels = np.array([1, 0, 0, 1, 0, 0], dtype=np.float32)
    ts = np.array([1, 1, 2, 3, 3, 3])
    got = D.point_in_time_ctr(items, labels, ts)
    g2, g3 = 2 / 22, 2 / 23          # before t2: 2 rows, 1 click; before t3: 3 rows, 1 click
    expected = [1 / 20, 1 / 20,       # t1: nothing earlier (not even the other t1 row)
                (1 + 1) / (1 + 1 / g2),   # a@t2: a seen once, clicked once
                (0 + 1) / (1 + 1 / g3),   # b@t3: b seen once (its own click at t3 not counted)
                g3,                       # c@t3: never seen: the global rate
                (1 + 1) / (2 + 1 / g3)]   # a@t3: a seen twice, one click
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # no leakage: a row's own label, a label at the same moment or later changes nothing up to that row
    flipped = labels.copy()
    flipped[3:] = 1 - flipped[3:]
    np.testing.assert_array_equal(D.point_in_time_ctr(items, flipped, ts)[:6], got)
    # row order does not matter, only time
    perm = np.array([5, 2, 0, 4, 1, 3])
    np.testing.assert_array_equal(D.point_in_time_ctr(items[perm], labels[perm], ts[perm]), got[perm])


def test_split_freezes_the_item_ctr_at_the_training_window(tmp_path):
    """The holdout's item_ctr is the training window's smoothed rate (= the popularity baseline's
    score), never counts from earlier holdout rows; the training rows keep their point-in-time values."""
    from recpilot.models.evaluate import popularity_scores

    ds = D.load_obd(_write_obd(tmp_path / "obd", rows=60), ("random",))
    j = D.OBD_DENSE_FEATURES.index("item_ctr")
    train, holdout = ds.split_time(0.3)
    np.testing.assert_allclose(holdout.dense[:, j], popularity_scores(train.items, train.labels, holdout.items), rtol=1e-6)
    np.testing.assert_array_equal(train.dense[:, j], ds.dense[:len(train), j])  # rows are in time order here
    # holdout labels do not reach any holdout feature
    flipped = holdout.take(np.arange(len(holdout)))
    flipped.labels[:] = 1 - flipped.labels
    both = D.Dataset(np.concatenate([train.dense, flipped.dense]), np.concatenate([train.ids, flipped.ids]),
                     np.concatenate([train.labels, flipped.labels]), np.concatenate([train.ts_ms, flipped.ts_ms]),
                     np.concatenate([train.groups, flipped.groups]), np.concatenate([train.items, flipped.items]),
                     ds.dense_features, ds.id_features, "obd", "flipped", ctr_feature="item_ctr")
    np.testing.assert_array_equal(both.split_time(0.3)[1].dense[:, j], holdout.dense[:, j])
    # the point-in-time values of the later rows did see earlier holdout rows: freezing changed them
    assert not np.allclose(ds.dense[len(train) + 1:, j], holdout.dense[1:, j])


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_item_prior_model_starts_at_the_prior_and_exports(framework, tmp_path):
    """Wide & deep (item_prior): untrained, the score is the item_ctr column itself; trained, the export
    reloads within 1e-5 and model.json keeps its signature."""
    from recpilot.models.train import make_ranker

    ds = D.load_obd(_write_obd(tmp_path / "obd", rows=120))
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


@pytest.mark.skipif(not (D.TrainSettings().obd_dir / "random" / "all.csv").exists(), reason="OBD sample not present")
def test_real_obd_sample_loads():
    ds = D.load_obd(D.TrainSettings().obd_dir)
    assert len(ds) == 20_000 and ds.positives == 80
    train, test = ds.split_time(0.2)
    assert train.ts_ms.max() <= test.ts_ms.min()


@pytest.mark.skipif(not (D.TrainSettings().obd_dir / "random" / "all.csv").exists(), reason="OBD sample not present")
def test_obd_loads_the_same_in_chunks_of_any_size():
    # the full dataset (26M rows) is read in chunks; the chunk size must not change a single value
    whole = D.load_obd(D.TrainSettings().obd_dir)
    chunked = D.load_obd(D.TrainSettings().obd_dir, chunk_rows=777)
    for name in ("dense", "ids", "labels", "ts_ms", "groups", "items"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name), err_msg=name)


def test_obd_header_only_log_is_an_empty_dataset(tmp_path):
    root = _write_obd(tmp_path / "obd", rows=10)
    log = root / "random" / "all.csv"
    log.write_text(log.read_text().splitlines()[0] + "\n")
    with pytest.raises(D.DataError, match="empty"):
        D.load_obd(root, ("random",))


# ---------------------------------------------------------------------------------------------
# bad inputs: clear errors, nothing written


def _run_cli(argv, repo_root, monkeypatch):
    from recpilot import cli

    monkeypatch.setenv("RECPILOT_MODEL_REPOSITORY", str(repo_root))
    return cli.main(argv)


def test_missing_data_file_is_a_clear_error(tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    rc = _run_cli(["train", "--framework", "torch", "--data", str(tmp_path / "nope.parquet"), "--quiet"], repo, monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2
    assert "data file not found" in err and "nope.parquet" in err
    assert not repo.exists() or ModelRepository(repo).models() == []


@pytest.mark.parametrize("content", ["", "request_id,user_id,item_id,timestamp_ms,label\n"])
def test_empty_dataset_is_a_clear_error(tmp_path, monkeypatch, capsys, content):
    repo = tmp_path / "repo"
    path = tmp_path / "empty.csv"
    path.write_text(content)
    rc = _run_cli(["train", "--framework", "torch", "--data", str(path), "--quiet"], repo, monkeypatch)
    err = capsys.readouterr().err
    assert rc == 2 and "empty" in err
    assert not repo.exists() or ModelRepository(repo).models() == []


def test_missing_obd_dir_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECPILOT_TRAIN_OBD_DIR", str(tmp_path / "no-obd"))
    rc = _run_cli(["train", "--framework", "torch", "--data", "obd", "--quiet"], tmp_path / "repo", monkeypatch)
    assert rc == 2 and "Open Bandit data file not found" in capsys.readouterr().err


def test_no_clicks_is_a_clear_error(small_ds, tmp_path):
    ds = small_ds.take(np.flatnonzero(small_ds.labels == 0))
    repo = ModelRepository(tmp_path / "repo")
    with pytest.raises(D.DataError, match="0 positives"):
        train_and_register(ds, "torch", hp=HP, repository=repo)
    assert repo.models() == []


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
    args = ["train", "--framework", "torch", "--data", str(path), "--epochs", "1", "--batch-size", "128",
            "--embedding-dim", "8", "--quiet"]
    assert _run_cli(args, repo, monkeypatch) == 0
    assert _run_cli(args + ["--production-version", "1", "--json"], repo, monkeypatch) == 0
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
    assert _run_cli(["train", "--framework", "torch", "--data", str(path2), "--epochs", "1", "--quiet",
                     "--no-production"], repo, monkeypatch) == 0
    capsys.readouterr()
    assert _run_cli(args + ["--production-version", "3", "--json", "--dry-run"], repo, monkeypatch) == 0
    out = capsys.readouterr().out
    meta3 = json.loads(out[out.index("{"):])
    assert meta3["metrics"]["production"]["version"] == "3"
    assert any("overlaps this holdout" in n for n in meta3["metrics"]["notes"])
    assert ModelRepository(repo).versions("ranker") == ["1", "2", "3"]  # the --dry-run wrote nothing


def test_simulator_events_replay_into_examples():
    """`--data sim:N`: the project's shopper simulator, replayed through featurespec like raw events."""
    ds = D.load_dataset("sim:3000:1", D.TrainSettings())
    events = D.simulated_events(3000, 1)
    views = [e for e in events if e["event_type"] == "VIEW" and e["item_id"]]
    assert len(ds) == len(views) and ds.feature_set == "recpilot"
    assert 0 < ds.positives < len(ds)
    # deterministic: the same spec gives the same examples
    again = D.load_dataset("sim:3000:1", D.TrainSettings())
    np.testing.assert_array_equal(ds.dense, again.dense)
    np.testing.assert_array_equal(ds.labels, again.labels)
    with pytest.raises(D.DataError, match="empty"):
        D.load_dataset("sim:0", D.TrainSettings())


def test_cli_tune_reports_the_best_trial_and_registers_it(tmp_path, monkeypatch, capsys):
    df = D.synthetic_impressions(1500, seed=9, n_users=150, n_items=80)
    path = tmp_path / "imps.parquet"
    df.to_parquet(path)
    repo = tmp_path / "repo"
    rc = _run_cli(["tune", "--framework", "torch", "--data", str(path), "--trials", "2", "--epochs", "1",
                   "--register", "--quiet"], repo, monkeypatch)
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


def test_corrupt_production_model_is_skipped_with_a_note(small_ds, tmp_path):
    """A damaged production version does not stop training: the comparison is skipped and says why."""
    from recpilot.models.train import evaluate_production, signature

    bad = tmp_path / "ranker" / "1"
    bad.mkdir(parents=True)
    (bad / "model.pt").write_bytes(b"garbage")
    inputs, outputs = signature(small_ds)
    meta = {"name": "ranker", "version": "1", "framework": "torch", "artifact": "model.pt", "inputs": inputs,
            "outputs": outputs, "feature_set": "recpilot", "dense_features": list(small_ds.dense_features),
            "id_features": [list(x) for x in small_ds.id_features]}
    _, holdout = small_ds.split_time(0.2)
    metrics, note = evaluate_production(Production("1", meta, bad), holdout)
    assert metrics is None
    assert "production version 1 could not be scored" in note and "not a loadable TorchScript model" in note
    other = {**meta, "feature_set": "obd"}
    metrics, note = evaluate_production(Production("1", other, bad), holdout)
    assert metrics is None and "uses other features" in note


def test_cli_regularisation_and_prior_flags():
    import argparse

    from recpilot.models.train_commands import _common, _hp

    p = argparse.ArgumentParser()
    _common(p)
    args = p.parse_args(["--framework", "torch", "--embedding-l2", "0.01", "--item-prior", "--width", "16",
                         "--weight-decay", "0.0001"])
    assert _hp(args) == {"embedding_l2": 0.01, "item_prior": True, "weight_decay": 0.0001, "bottom": [16, 8], "top": [16, 8]}
    assert "item_prior" not in _hp(p.parse_args(["--framework", "torch"]))


def test_last_days_window(small_ds):
    newest = int(small_ds.ts_ms.max())
    recent = small_ds.last(2)
    assert len(recent) == int((small_ds.ts_ms >= newest - 2 * 86_400_000).sum())
    assert 0 < len(recent) < len(small_ds)
    assert recent.ts_ms.min() >= newest - 2 * 86_400_000
    assert "last 2 days" in recent.source
