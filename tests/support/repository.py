"""Model repository builders for tests: complete model.json dicts and tiny artifact trees."""

from __future__ import annotations

from pathlib import Path

from recpilot.featurespec import DENSE_FEATURES, ID_FEATURES


def make_meta(framework: str = "torch", auc: float | None = 0.70, logloss: float | None = 0.40, **extra) -> dict:
    """A complete model.json dict as the trainer writes it, without name/version."""
    d, k = len(DENSE_FEATURES), len(ID_FEATURES)
    ref = {"mean": 0.5, "std": 0.1, "min": 0.0, "max": 1.0,
           "quantiles": {"p01": 0.0, "p50": 0.5, "p99": 1.0},
           "histogram": {"bounds": [0.0, 0.5, 1.0], "counts": [3, 4]}}
    block = {"auc": auc, "auc_ci": None if auc is None else [max(auc - 0.05, 0.0), min(auc + 0.05, 1.0)],
             "logloss": logloss, "recall@10": 0.3, "ndcg@10": 0.2}
    meta = {
        "framework": framework,
        "artifact": "model.pt" if framework == "torch" else "saved_model",
        "created_ms": 1_700_000_000_000,
        "inputs": [{"name": "dense", "datatype": "FP32", "shape": [-1, d]},
                   {"name": "ids", "datatype": "INT64", "shape": [-1, k]}],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}],
        "feature_set": "recpilot",
        "dense_features": list(DENSE_FEATURES),
        "id_features": [[n, b] for n, b in ID_FEATURES],
        "training": {"source": "fixture", "rows": 100, "data_window": {"start_ms": 1, "end_ms": 2}, "seed": 7,
                     "hyperparameters": {"lr": 0.01}, "seconds": 0.5},
        "metrics": {**block, "baseline": {**block, "auc": 0.5}, "production": None},
        "reference": {"item_ctr": ref, "score": ref},
    }
    meta.update(extra)
    return meta


def tiny_writer(framework: str = "torch", payload: bytes = b"weights", **meta_kw):
    """A writer that puts a real (tiny) artifact tree in the staging dir and returns model.json."""

    def write(staging: Path) -> dict:
        if framework == "torch":
            (staging / "model.pt").write_bytes(payload)
        else:
            sm = staging / "saved_model"
            (sm / "variables").mkdir(parents=True)
            (sm / "saved_model.pb").write_bytes(payload)
            (sm / "variables" / "variables.index").write_bytes(b"index")
        return make_meta(framework, **meta_kw)

    return write


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under root with file contents (None for directories)."""
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        out[p.relative_to(root).as_posix()] = p.read_bytes() if p.is_file() else None
    return out


def writable(version_dir: Path) -> None:
    """Undo the repository's read-only modes on a version tree, to damage it behind its back."""
    import os

    for p in [version_dir, *version_dir.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


def tamper(path: Path, data: bytes) -> None:
    """Overwrite one file of a published version (as a writer with access to the repository could)."""
    writable(path.parent)
    path.write_bytes(data)


def negated_weights(torchscript: bytes) -> bytes:
    """The same TorchScript archive, same size, with the largest stored tensor negated (the sign bit
    of every float32 flipped): still loads and scores (torch does not check the zip's CRCs), but
    gives other scores. What a forged artifact of unchanged size looks like to the loader."""
    import io
    import struct
    import zipfile

    data = bytearray(torchscript)
    with zipfile.ZipFile(io.BytesIO(torchscript)) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert entry.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len
    for j in range(start + 3, start + entry.file_size, 4):  # little-endian float32: sign bit in byte 3
        data[j] ^= 0x80
    return bytes(data)
