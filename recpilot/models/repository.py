"""The model repository: ``<root>/<model_name>/<version>/`` (the TF Serving / Triton layout).

Each version directory holds the artifact (``saved_model/`` for TensorFlow, ``model.pt`` for
TorchScript) and a ``model.json`` describing it (framework, input/output signature, training data
window, offline metrics, drift reference; see :func:`validate_meta`).

Versions are immutable once written:

* :meth:`ModelRepository.create_version` lets a writer fill a private staging directory, validates
  the ``model.json`` dict the writer returns, records a SHA-256 manifest of every file, and only
  then renames the staging directory to ``<root>/<name>/<next version>/`` in one atomic step; on
  any error the staging directory is removed and the repository is exactly as before.
* An existing version directory is never overwritten (the rename fails if the target exists; the
  next number is tried), and the published tree is made read-only (files 0444, directories 0555).
* Every file and directory of the staging tree is fsynced before the rename (and the directory
  holding the new version after it), so a version that is visible after a crash is complete.
* :meth:`ModelRepository.verify` (and :func:`verify_files`, which the loader runs before any
  framework reads a file) re-hashes the files against the manifest and refuses symbolic links,
  special files and files the manifest does not list, so a version changed behind the repository's
  back (or damaged on disk) is reported as corrupt. A version written before manifests existed has
  none: it is refused unless ``RECPILOT_MODEL_ALLOW_UNVERIFIED`` is set (docs/deployments.md).

This module is light to import (standard library only, plus settings for the default root).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from recpilot.errors import InvalidArgument, NotFound, RecpilotError

MODEL_JSON = "model.json"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"
STALE_STAGING_S = 24 * 3600.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")

FRAMEWORK_ARTIFACT = {"tensorflow": "saved_model", "torch": "model.pt"}
FEATURE_SETS = ("recpilot", "obd")
METRIC_KEYS = ("auc", "auc_ci", "logloss", "recall@10", "ndcg@10")
# Metrics the deployment gate compares, with their direction.
GATED_METRICS = {"auc": "higher", "logloss": "lower"}


class ModelRepositoryError(RecpilotError):
    """A repository operation failed; the message says what and where. The base every caller
    catches: a corrupt version or a broken write is this (a failure); the kinds below say more."""


class ModelNotFound(ModelRepositoryError, NotFound):
    """No such model, or no such version of it."""


class InvalidModelName(ModelRepositoryError, InvalidArgument):
    """A model name that can never exist (characters or length)."""


class ModelIntegrityError(ModelRepositoryError):
    """A version's files do not match its manifest (changed, added, missing, a symbolic link) or it
    has no manifest to check them against; nothing of it may be loaded."""


# --------------------------------------------------------------------------------------------
# model.json validation
# --------------------------------------------------------------------------------------------
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_tensor(spec: Any, where: str, errors: list[str]) -> None:
    if not isinstance(spec, dict):
        errors.append(f"{where}: expected an object with name, datatype, shape")
        return
    if not isinstance(spec.get("name"), str) or not spec.get("name"):
        errors.append(f"{where}.name: expected a non-empty string")
    if spec.get("datatype") not in ("FP32", "FP64", "INT32", "INT64", "BYTES", "BOOL"):
        errors.append(f"{where}.datatype: expected an Open Inference Protocol datatype, got {spec.get('datatype')!r}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and (d == -1 or d > 0) for d in shape):
        errors.append(f"{where}.shape: expected a list of positive ints or -1, got {shape!r}")


def _check_metric_block(block: Any, where: str, errors: list[str], required: bool) -> None:
    if not isinstance(block, dict):
        errors.append(f"{where}: expected an object with {', '.join(METRIC_KEYS)}")
        return
    for key in METRIC_KEYS:
        if key not in block:
            if required and key in GATED_METRICS:
                errors.append(f"{where}.{key}: missing")
            continue
        v = block[key]
        if v is None:
            continue  # undefined (e.g. AUC with no clicks in the holdout)
        if key == "auc_ci":
            if not (isinstance(v, list) and len(v) == 2 and all(_is_num(x) for x in v) and v[0] <= v[1]):
                errors.append(f"{where}.auc_ci: expected [lo, hi] with lo <= hi, got {v!r}")
        elif not _is_num(v):
            errors.append(f"{where}.{key}: expected a finite number or null, got {v!r}")
        elif key in ("auc", "recall@10", "ndcg@10") and not 0.0 <= float(v) <= 1.0:
            errors.append(f"{where}.{key}: expected a value in [0, 1], got {v!r}")
        elif key == "logloss" and float(v) < 0:
            errors.append(f"{where}.logloss: expected >= 0, got {v!r}")


def _check_files(meta: dict, errors: list[str]) -> None:
    """The manifest (``files``), when present: ``{relative path: {sha256, bytes}}``."""
    files = meta.get("files")
    if files is not None and not (
        isinstance(files, dict)
        and all(isinstance(v, dict) and isinstance(v.get("sha256"), str) and _is_int(v.get("bytes")) for v in files.values())
    ):
        errors.append("files: expected {relative path: {sha256, bytes}}")


POLICY_ARTIFACT = "policy.pt"
POLICY_SUFFIX = ".policy"  # the policies of ranker model ``m`` are versions of ``m.policy``
# the policy served when no learned one is: the ranker's own order; a policy version with no artifact
DEFAULT_POLICY_VERSION = "ranker-order"
# recpilot.rl.slate.Exploration's logged form (that module parses it; this one only checks its shape)
EXPLORATION_RE = re.compile(r"(greedy|uniform|epsilon_greedy:(0|1|0?\.[0-9]+|1\.0*)|softmax:[0-9.]+(e[-+]?[0-9]+)?)"
                            r"(\+uniform:(0|1|0?\.[0-9]+|1\.0*|[0-9.]+e-[0-9]+))?")  # recpilot.rl.slate.Exploration


def validate_policy_meta(meta: dict, name: str | None = None, version: str | None = None) -> list[str]:
    """Every problem with the ``model.json`` of a re-ranking policy (``"kind": "policy"``; the
    schema is in docs/learning.md)."""
    errors: list[str] = []
    for key in ("name", "version", "kind", "framework", "artifact", "created_ms", "inputs", "outputs",
                "policy", "training"):
        if key not in meta:
            errors.append(f"{key}: missing")
    if name is not None and "name" in meta and meta["name"] != name:
        errors.append(f"name: {meta['name']!r} does not match the directory {name!r}")
    if name is not None and not name.endswith(POLICY_SUFFIX):
        errors.append(f"name: a policy is stored under '<model>{POLICY_SUFFIX}', got {name!r}")
    if version is not None and "version" in meta and str(meta["version"]) != version:
        errors.append(f"version: {meta['version']!r} does not match the directory {version!r}")
    if meta.get("framework", "torch") != "torch":
        errors.append(f"framework: a policy is a torch module, got {meta.get('framework')!r}")
    if meta.get("artifact", POLICY_ARTIFACT) != POLICY_ARTIFACT:
        errors.append(f"artifact: a policy is stored as {POLICY_ARTIFACT!r}, got {meta.get('artifact')!r}")
    if "created_ms" in meta and not (_is_int(meta["created_ms"]) and meta["created_ms"] > 0):
        errors.append(f"created_ms: expected a positive integer, got {meta['created_ms']!r}")
    for key in ("inputs", "outputs"):
        specs = meta.get(key)
        if key in meta:
            if not isinstance(specs, list) or not specs:
                errors.append(f"{key}: expected a non-empty list")
            else:
                for i, spec in enumerate(specs):
                    _check_tensor(spec, f"{key}[{i}]", errors)
    pol = meta.get("policy")
    if "policy" in meta:
        if not isinstance(pol, dict):
            errors.append("policy: expected an object")
        else:
            feats = pol.get("features")
            if not (isinstance(feats, list) and feats and all(isinstance(x, str) for x in feats)):
                errors.append("policy.features: expected a non-empty list of input names")
            if not (isinstance(pol.get("exploration"), str) and EXPLORATION_RE.fullmatch(pol["exploration"])):
                errors.append("policy.exploration: expected greedy, uniform, epsilon_greedy:<p> or softmax:<t>, "
                              "optionally +uniform:<share>, "
                              f"got {pol.get('exploration')!r}")
    if "training" in meta and not isinstance(meta["training"], dict):
        errors.append("training: expected an object")
    _check_files(meta, errors)
    return errors


def validate_meta(meta: Any, name: str | None = None, version: str | None = None) -> list[str]:
    """Every problem with a ``model.json`` dict (empty list: valid). The schema is in
    docs/deployments.md (rankers) and docs/learning.md (policies, ``"kind": "policy"``)."""
    errors: list[str] = []
    if not isinstance(meta, dict):
        return [f"model.json must be a JSON object, got {type(meta).__name__}"]
    if meta.get("kind") == "policy":
        return validate_policy_meta(meta, name, version)
    required = ("name", "version", "framework", "artifact", "created_ms", "inputs", "outputs",
                "feature_set", "dense_features", "id_features", "training", "metrics", "reference")
    for key in required:
        if key not in meta:
            errors.append(f"{key}: missing")
    if name is not None and "name" in meta and meta["name"] != name:
        errors.append(f"name: {meta['name']!r} does not match the directory {name!r}")
    if version is not None and "version" in meta and str(meta["version"]) != version:
        errors.append(f"version: {meta['version']!r} does not match the directory {version!r}")
    fw = meta.get("framework")
    if "framework" in meta and fw not in FRAMEWORK_ARTIFACT:
        errors.append(f"framework: expected one of {sorted(FRAMEWORK_ARTIFACT)}, got {fw!r}")
    if "artifact" in meta and fw in FRAMEWORK_ARTIFACT and meta["artifact"] != FRAMEWORK_ARTIFACT[fw]:
        errors.append(f"artifact: a {fw} model is stored as {FRAMEWORK_ARTIFACT[fw]!r}, got {meta['artifact']!r}")
    if "created_ms" in meta and not (_is_int(meta["created_ms"]) and meta["created_ms"] > 0):
        errors.append(f"created_ms: expected a positive integer, got {meta['created_ms']!r}")
    if "feature_set" in meta and meta["feature_set"] not in FEATURE_SETS:
        errors.append(f"feature_set: expected one of {list(FEATURE_SETS)}, got {meta['feature_set']!r}")

    dense = meta.get("dense_features")
    if "dense_features" in meta and not (isinstance(dense, list) and dense and all(isinstance(x, str) for x in dense)):
        errors.append("dense_features: expected a non-empty list of feature names")
        dense = None
    idf = meta.get("id_features")
    if "id_features" in meta and not (
        isinstance(idf, list)
        and all(isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str) and _is_int(x[1]) and x[1] > 0
                for x in idf)
    ):
        errors.append("id_features: expected a list of [name, buckets] pairs")
        idf = None

    inputs = meta.get("inputs")
    if "inputs" in meta:
        if not isinstance(inputs, list) or not inputs:
            errors.append("inputs: expected a non-empty list")
        else:
            by_name = {}
            for i, spec in enumerate(inputs):
                _check_tensor(spec, f"inputs[{i}]", errors)
                if isinstance(spec, dict):
                    by_name[spec.get("name")] = spec
            for tname, dtype, feats in (("dense", "FP32", dense), ("ids", "INT64", idf)):
                spec = by_name.get(tname)
                if spec is None:
                    errors.append(f"inputs: no tensor named {tname!r}")
                    continue
                if spec.get("datatype") != dtype:
                    errors.append(f"inputs.{tname}.datatype: expected {dtype}, got {spec.get('datatype')!r}")
                shape = spec.get("shape")
                if isinstance(feats, list) and isinstance(shape, list) and len(shape) == 2 and shape[1] != len(feats):
                    errors.append(f"inputs.{tname}.shape: second dimension {shape[1]} != {len(feats)} features listed")
    outputs = meta.get("outputs")
    if "outputs" in meta:
        if not isinstance(outputs, list) or not outputs:
            errors.append("outputs: expected a non-empty list")
        else:
            for i, spec in enumerate(outputs):
                _check_tensor(spec, f"outputs[{i}]", errors)
            if not any(isinstance(s, dict) and s.get("name") == "score" and s.get("datatype") == "FP32"
                       for s in outputs):
                errors.append("outputs: no FP32 tensor named 'score'")

    training = meta.get("training")
    if "training" in meta:
        if not isinstance(training, dict):
            errors.append("training: expected an object")
        else:
            for key in ("source", "rows", "data_window", "seed", "hyperparameters", "seconds"):
                if key not in training:
                    errors.append(f"training.{key}: missing")
            if "rows" in training and not (_is_int(training["rows"]) and training["rows"] >= 0):
                errors.append(f"training.rows: expected a non-negative integer, got {training['rows']!r}")
            win = training.get("data_window")
            if "data_window" in training:
                if not (isinstance(win, dict) and _is_int(win.get("start_ms")) and _is_int(win.get("end_ms"))):
                    errors.append("training.data_window: expected {start_ms, end_ms} integers")
                elif win["start_ms"] > win["end_ms"]:
                    errors.append("training.data_window: start_ms is after end_ms")
            if "hyperparameters" in training and not isinstance(training["hyperparameters"], dict):
                errors.append("training.hyperparameters: expected an object")
            if "seconds" in training and not (_is_num(training["seconds"]) and training["seconds"] >= 0):
                errors.append("training.seconds: expected a non-negative number")

    metrics = meta.get("metrics")
    if "metrics" in meta:
        _check_metric_block(metrics, "metrics", errors, required=True)
        if isinstance(metrics, dict):
            if "baseline" in metrics and metrics["baseline"] is not None:
                _check_metric_block(metrics["baseline"], "metrics.baseline", errors, required=False)
            if metrics.get("production") is not None:
                _check_metric_block(metrics["production"], "metrics.production", errors, required=False)
    if "reference" in meta and not isinstance(meta["reference"], dict):
        errors.append("reference: expected an object {feature: {mean, std, min, max, quantiles, histogram}}")
    _check_files(meta, errors)
    return errors


def metrics_summary(meta: dict) -> dict:
    m = meta.get("metrics") or {}
    return {k: m.get(k) for k in METRIC_KEYS}


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def _scan(root: Path) -> tuple[dict[str, Path], list[str]]:
    """``({relative path: path} of the regular files under root, problems)``. Nothing is followed:
    a symbolic link (to a file or a directory) or a special file (FIFO, socket, device) anywhere
    in the tree is a problem, and the tree below a linked directory is not read."""
    files: dict[str, Path] = {}
    problems: list[str] = []
    stack = [(root, "")]
    while stack:
        d, prefix = stack.pop()
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = prefix + e.name
            if e.is_symlink():
                problems.append(f"{rel}: a symbolic link (not allowed in a model version)")
            elif e.is_dir(follow_symlinks=False):
                stack.append((Path(e.path), rel + "/"))
            elif e.is_file(follow_symlinks=False):
                files[rel] = Path(e.path)
            else:
                problems.append(f"{rel}: not a regular file (not allowed in a model version)")
    return dict(sorted(files.items())), problems


def _sha256(path: Path) -> tuple[str, int]:
    """``(hex digest, bytes read)``; refuses to open a symbolic link (O_NOFOLLOW), so a file swapped
    for a link after the scan is not followed either."""
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def file_manifest(root: Path) -> dict[str, dict]:
    """``{relative path: {sha256, bytes}}`` for every file under ``root`` except model.json;
    :class:`ModelRepositoryError` if the tree holds a symbolic link or a special file."""
    files, problems = _scan(root)
    if problems:
        raise ModelRepositoryError("; ".join(problems))
    out = {}
    for rel, p in files.items():
        if rel == MODEL_JSON:
            continue
        digest, size = _sha256(p)
        out[rel] = {"sha256": digest, "bytes": size}
    return out


def unverified_allowed() -> bool:
    """``RECPILOT_MODEL_ALLOW_UNVERIFIED``: load versions written before manifests existed."""
    from recpilot.settings import PlatformSettings, load

    return load(PlatformSettings).model_allow_unverified


def manifest_problems(path: Path, manifest: dict[str, dict]) -> list[str]:
    """Every difference between the version directory ``path`` and its ``manifest`` (empty: the
    files are exactly the ones written): a symbolic link or special file anywhere (the directory
    itself included), a listed file missing or with other bytes, a file the manifest does not list."""
    if path.is_symlink():
        return [f"{path}: the version directory is a symbolic link (not allowed)"]
    files, problems = _scan(path)
    for rel in sorted(set(files) | set(manifest)):
        if rel == MODEL_JSON:
            continue
        if rel not in files:
            if not any(p.startswith(rel + ":") for p in problems):
                problems.append(f"{rel}: missing")
        elif rel not in manifest:
            problems.append(f"{rel}: not in the manifest (added after the version was written)")
        else:
            want = manifest[rel] if isinstance(manifest[rel], dict) else {}
            try:
                digest, size = _sha256(files[rel])
            except OSError as exc:
                problems.append(f"{rel}: cannot be read ({exc.strerror or exc})")
                continue
            if size != want.get("bytes"):
                problems.append(f"{rel}: {size} bytes, the manifest says {want.get('bytes')} (content changed)")
            elif digest != want.get("sha256"):
                problems.append(f"{rel}: content changed (sha256 mismatch)")
    return problems


def verify_files(path: Path, meta: dict, *, allow_unverified: bool | None = None) -> None:
    """Check the version directory ``path`` against the manifest in its model.json ``meta``
    (:func:`manifest_problems`) before anything reads the artifact; raise
    :class:`ModelIntegrityError` naming every problem. A ``meta`` without a manifest (a version
    written before manifests existed) is refused unless ``allow_unverified`` (default: the
    ``RECPILOT_MODEL_ALLOW_UNVERIFIED`` setting, read only then)."""
    path = Path(path)
    where = f"model {meta.get('name', path.parent.name)}/{meta.get('version', path.name)}"
    manifest = meta.get("files")
    if manifest is None:
        if allow_unverified is None:
            allow_unverified = unverified_allowed()
        if allow_unverified:
            return
        raise ModelIntegrityError(
            f"{where} has no file manifest (written before manifests existed), so its files cannot be verified: "
            "register it again (recpilot train writes a verified version), or set "
            "RECPILOT_MODEL_ALLOW_UNVERIFIED=true to load unverified versions")
    if not isinstance(manifest, dict):
        raise ModelIntegrityError(f"{where} failed verification: the manifest is not an object")
    problems = manifest_problems(path, manifest)
    if problems:
        raise ModelIntegrityError(f"{where} failed verification: " + "; ".join(problems))


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory bottom-up (root last), so the data and the names
    under ``root`` are on disk before ``root`` is renamed into place."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for fn in filenames:
            p = Path(dirpath) / fn
            if not p.is_symlink():
                _fsync_path(p)
        _fsync_path(Path(dirpath), directory=True)


def _make_read_only(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for fn in filenames:
            os.chmod(Path(dirpath) / fn, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)


def _rmtree(path: Path) -> None:
    def onerror(func, p, _exc):
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
        func(p)

    if path.exists():
        shutil.rmtree(path, onerror=onerror)


# --------------------------------------------------------------------------------------------
# the repository
# --------------------------------------------------------------------------------------------
class ModelRepository:
    """``<root>/<model_name>/<version>/`` with immutable, validated versions."""

    def __init__(self, root: Path | str | None = None) -> None:
        if root is None:
            from recpilot.settings import PlatformSettings, load

            root = load(PlatformSettings).model_repo
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRepository({str(self.root)!r})"

    # -- reading -------------------------------------------------------------------------
    def models(self) -> list[str]:
        """Names of the models that have at least one version."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and NAME_RE.match(p.name) and self.versions(p.name))

    def rankers(self) -> list[str]:
        """:meth:`models` less the re-ranking policies (``<model>.policy``): the models a serving
        replica, ``recpilot models`` and the bootstrap treat as rankers."""
        return [n for n in self.models() if not n.endswith(POLICY_SUFFIX)]

    def versions(self, name: str) -> list[str]:
        """Version directories of ``name`` ("1", "2", ...), sorted numerically."""
        d = self.root / name
        if not NAME_RE.match(name) or not d.is_dir():
            return []
        return sorted((p.name for p in d.iterdir() if p.is_dir() and VERSION_RE.match(p.name)), key=int)

    def latest(self, name: str) -> str | None:
        vs = self.versions(name)
        return vs[-1] if vs else None

    def path(self, name: str, version: str) -> Path:
        """The directory of a version; :class:`ModelRepositoryError` if there is none."""
        version = str(version)
        if not NAME_RE.match(name):
            raise InvalidModelName(f"invalid model name {name!r} (letters, digits, '_', '.', '-')")
        if not (self.root / name).is_dir():
            known = ", ".join(self.models()) or "none"
            raise ModelNotFound(f"no model {name!r} in {self.root} (models: {known})")
        p = self.root / name / version
        if not VERSION_RE.match(version) or not p.is_dir():
            known = ", ".join(self.versions(name)) or "none"
            raise ModelNotFound(f"model {name!r} has no version {version!r} in {self.root} (versions: {known})")
        return p

    def meta(self, name: str, version: str) -> dict:
        """The parsed, validated model.json of a version (artifact present, manifest consistent)."""
        version = str(version)
        p = self.path(name, version)
        mj = p / MODEL_JSON
        where = f"{name}/{version}"
        try:
            raw = mj.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelRepositoryError(f"model {where} is corrupt: {mj} is missing") from None
        except OSError as exc:
            raise ModelRepositoryError(f"model {where} is corrupt: cannot read {mj}: {exc}") from None
        try:
            meta = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelRepositoryError(f"model {where} is corrupt: {mj} is not valid JSON ({exc})") from None
        errors = validate_meta(meta, name=name, version=version)
        if not errors:
            art = p / meta["artifact"]
            if not art.exists():
                errors.append(f"artifact {meta['artifact']!r} is missing")
            for rel, info in (meta.get("files") or {}).items():
                f = p / rel
                if not f.is_file():
                    errors.append(f"file {rel!r} listed in the manifest is missing")
                elif f.stat().st_size != info["bytes"]:
                    errors.append(f"file {rel!r} has {f.stat().st_size} bytes, the manifest says {info['bytes']}")
        if errors:
            raise ModelRepositoryError(f"model {where} is corrupt: invalid {MODEL_JSON}: " + "; ".join(errors))
        return meta

    def verify(self, name: str, version: str, *, allow_unverified: bool | None = None) -> dict:
        """:meth:`meta` plus :func:`verify_files`: a full re-hash of every file against the
        manifest, no symbolic link, no file the manifest does not list. A version without a
        manifest raises :class:`ModelIntegrityError` unless ``allow_unverified`` (default: the
        ``RECPILOT_MODEL_ALLOW_UNVERIFIED`` setting)."""
        version = str(version)
        if NAME_RE.match(name) and (self.root / name).is_symlink():
            raise ModelIntegrityError(f"model {name}/{version} failed verification: {self.root / name} is a symbolic link")
        meta = self.meta(name, version)
        verify_files(self.path(name, version), meta, allow_unverified=allow_unverified)
        return meta

    def describe(self) -> list[dict]:
        """Every model with its versions: framework, created, metrics summary or the error."""
        out = []
        for name in self.models():
            versions = []
            for v in self.versions(name):
                try:
                    m = self.meta(name, v)
                    if m.get("kind") == "policy":
                        pol = m["policy"]
                        versions.append({"version": v, "valid": True, "kind": "policy", "framework": m["framework"],
                                         "created_ms": m["created_ms"], "exploration": pol.get("exploration"),
                                         "pool_size": pol.get("pool_size"), "gamma": pol.get("gamma"),
                                         "ope": m.get("ope")})
                        continue
                    versions.append({"version": v, "valid": True, "kind": "ranker", "framework": m["framework"],
                                     "feature_set": m["feature_set"], "created_ms": m["created_ms"],
                                     "training_rows": m["training"].get("rows"),
                                     "data_window": m["training"].get("data_window"),
                                     "metrics": metrics_summary(m)})
                except ModelRepositoryError as exc:
                    versions.append({"version": v, "valid": False, "error": str(exc)})
            out.append({"name": name, "kind": "policy" if name.endswith(POLICY_SUFFIX) else "ranker",
                        "versions": versions})
        return out

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def clean_staging(self, older_than_s: float = STALE_STAGING_S) -> list[str]:
        """Remove staging directories left by writers that died (kill -9) mid-write; they were never
        visible as versions. Only those untouched for ``older_than_s`` (a live writer's is newer)."""
        removed = []
        staging_root = self.root / STAGING_DIR
        if not staging_root.is_dir():
            return removed
        now = time.time()
        for p in staging_root.iterdir():
            try:
                if now - p.stat().st_mtime > older_than_s:
                    _rmtree(p) if p.is_dir() else p.unlink()
                    removed.append(p.name)
            except OSError:
                continue
        return removed

    def create_version(self, name: str, writer: Callable[[Path], dict]) -> str:
        """Write a new version of ``name`` and return its number.

        ``writer(staging_dir)`` writes the artifacts and returns the model.json dict (``name``,
        ``version`` and ``created_ms`` are filled in by the repository when absent; ``version`` is
        always the one allocated here). The dict is validated, a file manifest is added, every file
        and directory is fsynced (:func:`fsync_tree`), and the staging directory is renamed
        atomically to ``<root>/<name>/<version>/`` and made read-only.
        On any error nothing is left in the repository and the error propagates
        (:class:`ModelRepositoryError` for validation problems).
        """
        if not NAME_RE.match(name):
            raise InvalidModelName(f"invalid model name {name!r} (letters, digits, '_', '.', '-'; at most 64)")
        staging_root = self.root / STAGING_DIR
        staging_root.mkdir(parents=True, exist_ok=True)
        self.clean_staging()
        staging = staging_root / f"{name}-{uuid.uuid4().hex}"
        staging.mkdir()
        model_dir = self.root / name
        created_model_dir = False
        try:
            meta = writer(staging)
            if not isinstance(meta, dict):
                raise ModelRepositoryError(f"the writer must return the model.json dict, got {type(meta).__name__}")
            meta = dict(meta)
            if meta.get("name", name) != name:
                raise ModelRepositoryError(f"model.json name {meta['name']!r} does not match {name!r}")
            meta["name"] = name
            meta.setdefault("created_ms", int(time.time() * 1000))
            art = meta.get("artifact")
            if isinstance(art, str) and not (staging / art).exists():
                raise ModelRepositoryError(f"the writer did not write the artifact {art!r}")
            meta["files"] = file_manifest(staging)
            fsync_tree(staging)  # the artifact's data and names on disk (outside the lock: may be slow)
            with self._lock():
                if not model_dir.exists():
                    model_dir.mkdir()
                    created_model_dir = True
                existing = self.versions(name)
                number = int(existing[-1]) + 1 if existing else 1
                while True:
                    version = str(number)
                    meta["version"] = version
                    errors = validate_meta(meta, name=name, version=version)
                    if errors:
                        raise ModelRepositoryError(f"invalid model.json for {name}: " + "; ".join(errors))
                    tmp = staging / (MODEL_JSON + ".tmp")
                    with open(tmp, "w", encoding="utf-8") as fh:
                        json.dump(meta, fh, indent=2, sort_keys=True)
                        fh.write("\n")
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, staging / MODEL_JSON)
                    _fsync_path(staging, directory=True)  # model.json's name, before the version is visible
                    target = model_dir / version
                    if target.exists():
                        number += 1  # written by a process that does not take the lock: never overwrite
                        continue
                    try:
                        os.rename(staging, target)  # atomic; fails if a non-empty target appeared meanwhile
                    except OSError as exc:
                        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                            number += 1
                            continue
                        raise
                    break
            _make_read_only(target)
            with contextlib.suppress(OSError):
                _fsync_path(model_dir, directory=True)  # the rename itself
                if created_model_dir:
                    _fsync_path(self.root, directory=True)
            return version
        except BaseException:
            _rmtree(staging)
            if created_model_dir:
                with contextlib.suppress(OSError):
                    model_dir.rmdir()  # only if still empty
            raise
        finally:
            with contextlib.suppress(OSError):
                staging_root.rmdir()  # only if empty
