"""The model repository: layout, validation, atomic and immutable versions (no Kafka, no frameworks)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from recpilot.models.repository import MODEL_JSON, ModelRepository, ModelRepositoryError, validate_meta
from tests.support.repository import make_meta, snapshot, tiny_writer, writable


def test_layout_and_numeric_versions(tmp_path):
    repo = ModelRepository(tmp_path)
    assert repo.models() == []
    versions = [repo.create_version("ranker", tiny_writer("torch", payload=bytes([i]))) for i in range(11)]
    assert versions == [str(i) for i in range(1, 12)]
    assert repo.versions("ranker") == [str(i) for i in range(1, 12)]  # numeric, not "1","10","11","2"
    assert repo.latest("ranker") == "11"
    v = repo.create_version("tf_ranker", tiny_writer("tensorflow"))
    assert v == "1"
    assert repo.models() == ["ranker", "tf_ranker"]
    # Triton / TF Serving layout
    assert (tmp_path / "ranker" / "3" / "model.pt").read_bytes() == bytes([2])
    assert (tmp_path / "tf_ranker" / "1" / "saved_model" / "saved_model.pb").is_file()
    assert repo.path("ranker", "3") == tmp_path / "ranker" / "3"
    meta = repo.meta("ranker", "3")
    assert meta["name"] == "ranker" and meta["version"] == "3" and meta["framework"] == "torch"
    assert set(meta["files"]) == {"model.pt"} and meta["files"]["model.pt"]["bytes"] == 1
    on_disk = json.loads((tmp_path / "ranker" / "3" / MODEL_JSON).read_text())
    assert on_disk == meta
    # no staging leftovers
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["ranker", "tf_ranker"]


def test_versions_are_read_only_and_never_overwritten(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.create_version("m", tiny_writer("tensorflow", payload=b"first"))
    vdir = tmp_path / "m" / "1"
    for p in [vdir, *vdir.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, p
    before = snapshot(vdir)
    repo.create_version("m", tiny_writer("tensorflow", payload=b"second"))
    assert snapshot(vdir) == before
    assert (tmp_path / "m" / "2" / "saved_model" / "saved_model.pb").read_bytes() == b"second"


def test_concurrent_writers_get_distinct_versions(tmp_path):
    repo = ModelRepository(tmp_path)
    results, errors = [], []

    def work(i):
        try:
            results.append(repo.create_version("m", tiny_writer(payload=str(i).encode())))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results, key=int) == ["1", "2", "3", "4", "5", "6"]
    payloads = sorted((tmp_path / "m" / v / "model.pt").read_bytes() for v in results)
    assert payloads == sorted(str(i).encode() for i in range(6))


@pytest.mark.parametrize("case, writer, message", [
    ("writer raises", None, "disk full"),
    ("missing artifact", "no-artifact", "did not write the artifact 'model.pt'"),
    ("bad framework", "bad-framework", "framework: expected one of"),
    ("missing metrics", "no-metrics", "metrics: missing"),
    ("shape mismatch", "bad-shape", "inputs.dense.shape: second dimension 3"),
    ("bad data window", "bad-window", "training.data_window: start_ms is after end_ms"),
    ("auc out of range", "bad-auc", "metrics.auc: expected a value in [0, 1]"),
    ("not a dict", "not-dict", "must return the model.json dict"),
])
def test_failed_create_leaves_nothing(tmp_path, case, writer, message):
    repo = ModelRepository(tmp_path)
    repo.create_version("m", tiny_writer())
    before = snapshot(tmp_path)

    def bad(staging: Path):
        (staging / "model.pt").write_bytes(b"x")
        meta = make_meta()
        if writer is None:
            raise OSError("disk full")
        if writer == "no-artifact":
            (staging / "model.pt").unlink()
        elif writer == "bad-framework":
            meta["framework"] = "sklearn"
        elif writer == "no-metrics":
            del meta["metrics"]
        elif writer == "bad-shape":
            meta["inputs"][0]["shape"] = [-1, 3]
        elif writer == "bad-window":
            meta["training"]["data_window"] = {"start_ms": 5, "end_ms": 1}
        elif writer == "bad-auc":
            meta["metrics"]["auc"] = 1.5
        elif writer == "not-dict":
            return ["nope"]
        return meta

    with pytest.raises((ModelRepositoryError, OSError)) as exc_info:
        repo.create_version("m", bad)
    assert message in str(exc_info.value), case
    assert snapshot(tmp_path) == before
    assert repo.versions("m") == ["1"]
    # nothing for a model that did not exist before either
    with pytest.raises((ModelRepositoryError, OSError)):
        repo.create_version("fresh", bad)
    assert not (tmp_path / "fresh").exists()
    assert repo.models() == ["m"]


def test_invalid_name(tmp_path):
    repo = ModelRepository(tmp_path)
    with pytest.raises(ModelRepositoryError, match="invalid model name"):
        repo.create_version("../escape", tiny_writer())
    assert snapshot(tmp_path) == {} or set(snapshot(tmp_path)) <= {".lock"}


def test_unknown_model_and_version_errors(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.create_version("m", tiny_writer())
    with pytest.raises(ModelRepositoryError, match=r"model 'm' has no version '7'.*versions: 1"):
        repo.meta("m", "7")
    with pytest.raises(ModelRepositoryError, match=r"no model 'other'.*models: m"):
        repo.path("other", "1")
    with pytest.raises(ModelRepositoryError, match="has no version 'latest'"):
        repo.path("m", "latest")


def _break(path: Path, data: bytes | None) -> None:
    os.chmod(path.parent, 0o755)
    if path.exists():
        os.chmod(path, 0o644)
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("damage, message", [
    ("garbage json", "is not valid JSON"),
    ("missing model.json", "model.json is missing"),
    ("missing artifact", "artifact 'model.pt' is missing"),
    ("invalid field", "framework: expected one of"),
    ("wrong version field", "does not match the directory '1'"),
])
def test_corrupt_version_is_reported(tmp_path, damage, message):
    repo = ModelRepository(tmp_path)
    repo.create_version("m", tiny_writer())
    vdir = tmp_path / "m" / "1"
    mj = vdir / MODEL_JSON
    if damage == "garbage json":
        _break(mj, b"{not json")
    elif damage == "missing model.json":
        _break(mj, None)
    elif damage == "missing artifact":
        _break(vdir / "model.pt", None)
    else:
        meta = json.loads(mj.read_text())
        if damage == "invalid field":
            meta["framework"] = "onnx"
        else:
            meta["version"] = "2"
        _break(mj, json.dumps(meta).encode())
    with pytest.raises(ModelRepositoryError, match="model m/1 is corrupt") as exc_info:
        repo.meta("m", "1")
    assert message in str(exc_info.value)
    listed = repo.describe()
    assert listed[0]["versions"][0]["valid"] is False
    assert message in listed[0]["versions"][0]["error"]


def test_verify_detects_changed_content(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.create_version("m", tiny_writer("tensorflow", payload=b"abcdef"))
    assert repo.verify("m", "1")["version"] == "1"
    pb_file = tmp_path / "m" / "1" / "saved_model" / "saved_model.pb"
    _break(pb_file, b"ABCDEF")  # same size: only the hash can tell
    assert repo.meta("m", "1")["version"] == "1"
    with pytest.raises(ModelRepositoryError, match="saved_model/saved_model.pb: content changed"):
        repo.verify("m", "1")


def test_validate_meta_accepts_the_contract_and_undefined_metrics():
    meta = make_meta("tensorflow", auc=None, logloss=None, name="m", version="1")
    assert validate_meta(meta, name="m", version="1") == []
    meta["metrics"]["production"] = {"auc": 0.6, "logloss": 0.5, "recall@10": 0.1, "ndcg@10": 0.1,
                                     "auc_ci": [0.55, 0.65]}
    assert validate_meta(meta) == []
    meta["metrics"]["production"]["auc_ci"] = [0.7, 0.6]
    assert validate_meta(meta) == ["metrics.production.auc_ci: expected [lo, hi] with lo <= hi, got [0.7, 0.6]"]
    assert validate_meta([]) == ["model.json must be a JSON object, got list"]
    torch_as_tf = make_meta("torch", name="m", version="1")
    torch_as_tf["artifact"] = "saved_model"
    assert validate_meta(torch_as_tf) == ["artifact: a torch model is stored as 'model.pt', got 'saved_model'"]


def test_staging_left_by_a_dead_writer_is_invisible_and_cleaned(tmp_path):
    repo = ModelRepository(tmp_path)
    repo.create_version("m", tiny_writer())
    # a writer killed mid-write leaves its staging directory behind
    dead = tmp_path / ".staging" / "m-deadbeef"
    dead.mkdir(parents=True)
    (dead / "model.pt").write_bytes(b"half")
    assert repo.models() == ["m"] and repo.versions("m") == ["1"]
    assert repo.clean_staging() == []  # recent: could be a live writer
    old = time.time() - 2 * 24 * 3600
    os.utime(dead, (old, old))
    assert repo.create_version("m", tiny_writer()) == "2"  # cleans stale staging on the way
    assert not dead.exists()


# --------------------------------------------------------------------------------------------
# verification at load: manifest, unlisted files, symbolic links, versions without a manifest


def _tf_version(tmp_path) -> tuple[ModelRepository, Path]:
    repo = ModelRepository(tmp_path / "repo")
    repo.create_version("m", tiny_writer("tensorflow", payload=b"graph-bytes"))
    return repo, tmp_path / "repo" / "m" / "1"


@pytest.mark.parametrize("damage, message", [
    ("modified byte", "saved_model/saved_model.pb: content changed (sha256 mismatch)"),
    ("added file", "saved_model/extra.py: not in the manifest"),
    ("added file at the top", "evil.so: not in the manifest"),
    ("symlink to a same-content file", "saved_model/saved_model.pb: a symbolic link"),
    ("symlinked directory", "saved_model/variables: a symbolic link"),
    ("symlinked model.json", "model.json: a symbolic link"),
    ("symlinked version directory", "the version directory is a symbolic link"),
    ("fifo", "pipe: not a regular file"),
])
def test_verify_refuses_changed_added_and_linked_files(tmp_path, damage, message):
    from recpilot.models.repository import ModelIntegrityError, verify_files

    repo, vdir = _tf_version(tmp_path)
    meta = repo.verify("m", "1")
    outside = tmp_path / "outside"
    outside.mkdir()
    writable(vdir)
    pb_file = vdir / "saved_model" / "saved_model.pb"
    if damage == "modified byte":
        data = bytearray(pb_file.read_bytes())
        data[3] ^= 0x01
        pb_file.write_bytes(bytes(data))  # same size: only the hash can tell
    elif damage == "added file":
        (vdir / "saved_model" / "extra.py").write_text("import os\n")
    elif damage == "added file at the top":
        (vdir / "evil.so").write_bytes(b"\x7fELF")
    elif damage == "symlink to a same-content file":
        (outside / "saved_model.pb").write_bytes(pb_file.read_bytes())  # the hash alone would pass
        pb_file.unlink()
        pb_file.symlink_to(outside / "saved_model.pb")
    elif damage == "symlinked directory":
        shutil.move(vdir / "saved_model" / "variables", outside / "variables")
        (vdir / "saved_model" / "variables").symlink_to(outside / "variables")
    elif damage == "symlinked model.json":
        shutil.move(vdir / MODEL_JSON, outside / MODEL_JSON)
        (vdir / MODEL_JSON).symlink_to(outside / MODEL_JSON)
    elif damage == "symlinked version directory":
        shutil.move(vdir, outside / "1")
        vdir.symlink_to(outside / "1")
    elif damage == "fifo":
        os.mkfifo(vdir / "pipe")
    with pytest.raises(ModelIntegrityError, match="model m/1 failed verification") as exc_info:
        repo.verify("m", "1")
    assert message in str(exc_info.value)
    with pytest.raises(ModelIntegrityError) as exc_info:  # what the loader runs, with the meta it was given
        verify_files(vdir, meta)
    assert message in str(exc_info.value)


def test_a_version_without_a_manifest_is_refused_unless_allowed(tmp_path, monkeypatch, capsys):
    from recpilot.cli import main
    from recpilot.models.repository import ModelIntegrityError

    monkeypatch.delenv("RECPILOT_MODEL_ALLOW_UNVERIFIED", raising=False)
    repo, vdir = _tf_version(tmp_path)
    meta = json.loads((vdir / MODEL_JSON).read_text())
    del meta["files"]  # as written before manifests existed
    writable(vdir)
    (vdir / MODEL_JSON).write_text(json.dumps(meta))
    assert repo.meta("m", "1")["version"] == "1"  # still listed, still readable
    with pytest.raises(ModelIntegrityError, match="has no file manifest.*register it again.*RECPILOT_MODEL_ALLOW_UNVERIFIED"):
        repo.verify("m", "1")
    assert repo.verify("m", "1", allow_unverified=True)["version"] == "1"
    root = ["--repository", str(tmp_path / "repo")]
    assert main(["models", "verify", "m", "1", *root]) == 1
    assert "m/1: model m/1 has no file manifest" in capsys.readouterr().out
    monkeypatch.setenv("RECPILOT_MODEL_ALLOW_UNVERIFIED", "true")
    assert repo.verify("m", "1")["version"] == "1"  # the setting, read when it matters
    # `models verify` still says it cannot verify it, and that it is loaded anyway
    assert main(["models", "verify", "m", "1", *root]) == 1
    assert "it is loaded anyway" in capsys.readouterr().out


def test_models_verify_reports_manifest_problems(tmp_path, capsys):
    from recpilot.cli import main

    repo, vdir = _tf_version(tmp_path)
    repo.create_version("m", tiny_writer("tensorflow", payload=b"second"))
    root = ["--repository", str(tmp_path / "repo")]
    assert main(["models", "verify", "m", *root]) == 0
    assert "m/1: ok (2 files match the manifest)" in capsys.readouterr().out
    writable(vdir)
    (vdir / "saved_model" / "variables" / "extra.bin").write_bytes(b"x")
    assert main(["models", "verify", "m", *root]) == 1
    out = capsys.readouterr().out
    assert "m/1: model m/1 failed verification: saved_model/variables/extra.bin: not in the manifest" in out
    assert "m/2: ok" in out


def test_publish_fsyncs_every_file_and_directory_before_the_rename(tmp_path, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to name the fsynced descriptors")
    events: list[tuple] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", Path(src).resolve(), Path(dst).resolve()))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    root = (tmp_path / "repo").resolve()
    repo = ModelRepository(root)
    assert repo.create_version("m", tiny_writer("tensorflow")) == "1"
    at = next(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == root / "m" / "1")
    staging = events[at][1]
    before = {e[1] for e in events[:at] if e[0] == "fsync"}
    want = {staging / "saved_model" / "saved_model.pb", staging / "saved_model" / "variables" / "variables.index",
            staging / (MODEL_JSON + ".tmp"),  # model.json's data, fsynced before its rename into place
            staging, staging / "saved_model", staging / "saved_model" / "variables"}
    assert want <= before, f"not fsynced before the version was published: {sorted(map(str, want - before))}"
    after = {e[1] for e in events[at + 1:] if e[0] == "fsync"}
    assert {root / "m", root} <= after  # the rename, and the new model directory's name
