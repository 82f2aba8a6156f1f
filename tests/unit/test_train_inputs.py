"""What training reads, without training a model: datasets from raw events, logged impressions,
Open Bandit folders and the simulator (point-in-time features, labels, the split), the notes a
training run writes, and bad inputs that stop `recpilot train` with a clear error and nothing
written. Training itself is in tests/integration/test_train.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recpilot import featurespec
from recpilot.models import data as D
from recpilot.models.repository import ModelRepository
from recpilot.models.train import Production, train_and_register

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


def test_obd_features(tmp_path, write_obd):
    root = write_obd(tmp_path / "obd")
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


def test_obd_campaigns_and_both_layouts(tmp_path, write_obd):
    flat = D.load_obd(write_obd(tmp_path / "flat"), ("random",))
    nested = D.load_obd(write_obd(tmp_path / "nested", nested=True), ("random",))
    for name in ("dense", "ids", "labels", "ts_ms", "items"):
        np.testing.assert_array_equal(getattr(nested, name), getattr(flat, name), err_msg=name)
    root = write_obd(tmp_path / "full", rows=40, campaign="men", nested=True)
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


def test_default_model_name_names_the_obd_campaign(tmp_path, write_obd):
    from recpilot.models.train_commands import _default_name

    assert _default_name(D.load_obd(write_obd(tmp_path / "a"))) == "ranker-obd"
    assert _default_name(D.load_obd(write_obd(tmp_path / "m", campaign="men", nested=True), campaign="men")) == "ranker-obd-men"
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


def test_split_freezes_the_item_ctr_at_the_training_window(tmp_path, write_obd):
    """The holdout's item_ctr is the training window's smoothed rate (= the popularity baseline's
    score), never counts from earlier holdout rows; the training rows keep their point-in-time values."""
    from recpilot.models.evaluate import popularity_scores

    ds = D.load_obd(write_obd(tmp_path / "obd", rows=60), ("random",))
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


def test_obd_header_only_log_is_an_empty_dataset(tmp_path, write_obd):
    root = write_obd(tmp_path / "obd", rows=10)
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
        train_and_register(ds, "torch", repository=repo)  # refused before any training
    assert repo.models() == []


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


def test_corrupt_production_model_is_skipped_with_a_note(small_ds, tmp_path):
    """A damaged production version does not stop training: the comparison is skipped and says why."""
    from recpilot.models.repository import file_manifest
    from recpilot.models.train import evaluate_production, signature

    bad = tmp_path / "ranker" / "1"
    bad.mkdir(parents=True)
    (bad / "model.pt").write_bytes(b"garbage")
    inputs, outputs = signature(small_ds)
    meta = {"name": "ranker", "version": "1", "framework": "torch", "artifact": "model.pt", "inputs": inputs,
            "outputs": outputs, "feature_set": "recpilot", "dense_features": list(small_ds.dense_features),
            "id_features": [list(x) for x in small_ds.id_features], "files": file_manifest(bad)}
    _, holdout = small_ds.split_time(0.2)
    metrics, note = evaluate_production(Production("1", meta, bad), holdout)
    assert metrics is None
    assert "production version 1 could not be scored" in note and "not a loadable TorchScript model" in note
    # changed after it was written: refused before torch reads it, training goes on
    (bad / "model.pt").write_bytes(b"GARBAGE")
    metrics, note = evaluate_production(Production("1", meta, bad), holdout)
    assert metrics is None and "model.pt: content changed (sha256 mismatch)" in note
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
