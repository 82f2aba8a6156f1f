"""Train the ranker, evaluate it on a time-based holdout, export it into the model repository.

Domain code: no argparse here (that is train_commands.py). The steps of :func:`train_and_register`:

1. split the dataset by time (the latest ``holdout_fraction`` is the holdout);
2. build the framework's ranker (ranker_torch / ranker_tf, same architecture), with the dense
   standardisation statistics and the base click rate taken from the training window only;
3. train for ``epochs`` (seeded shuffles, progress bar, per-epoch train loss + holdout AUC/log loss);
4. evaluate the model, the popularity baseline and (when there is one) the production model on the
   holdout;
5. export through ``ModelRepository.create_version``: the writer exports the artifact, reloads it
   through ``loader.load_model`` and refuses to publish unless the reloaded model gives the same
   scores as the trained one (max |diff| <= 1e-5), then returns model.json. Any error -> nothing is
   written.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from recpilot.errors import RecpilotError
from recpilot.models import evaluate as ev
from recpilot.models.data.dataset import Dataset, DataError, check_not_empty

log = logging.getLogger(__name__)

FRAMEWORKS = ("torch", "tensorflow")
DEFAULT_HP = {"embedding_dim": 16, "bottom": [64, 32], "top": [64, 32], "lr": 3e-3, "batch_size": 512,
              "epochs": 3, "weight_decay": 0.0, "embedding_l2": 0.0, "item_prior": False, "patience": 1,
              "validation_fraction": 0.1}
EXPORT_TOLERANCE = 1e-5
RANK_K = 10


class TrainError(RecpilotError, RuntimeError):
    """Training or evaluation could not produce a model (the message says why)."""


# --------------------------------------------------------------------------------------------
# terminal progress


class Progress:
    """A one-line progress bar on a terminal (redrawn at most 10x a second); on a pipe only the
    per-epoch lines are written."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self._last = 0.0

    def batch(self, label: str, done: int, total: int, loss: float, t0: float) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{label} [{bar}] {done}/{total} loss {loss:.4f} {now - t0:5.1f}s")
        self.stream.flush()

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# building and fitting


def make_ranker(framework: str, ds: Dataset, hp: dict, seed: int):
    mean = ds.dense.mean(axis=0) if len(ds) else np.zeros(ds.dense.shape[1], np.float32)
    std = ds.dense.std(axis=0) if len(ds) else np.ones(ds.dense.shape[1], np.float32)
    base = float(ds.labels.mean()) if len(ds) else 0.5
    buckets = [b for _, b in ds.id_features]
    # wide & deep (hp item_prior): a dataset with a point-in-time item click rate (OBD item_ctr) gives the
    # model its log-odds as a fixed prior and the network learns the correction. Off by default: on the
    # OBD sample it did not help on validation inside the training window (docs/models.md)
    prior = ds.dense_features.index(ds.ctr_feature) if ds.ctr_feature and hp.get("item_prior", False) else -1
    if framework in FRAMEWORKS:
        from recpilot.models.loader import apply_threads

        apply_threads(framework)  # before the framework's runtime starts
    if framework == "torch":
        from recpilot.models.ranker_torch import TorchRanker

        return TorchRanker(ds.dense.shape[1], buckets, hp, seed, mean, std, base, prior)
    if framework == "tensorflow":
        from recpilot.models.ranker_tf import TFRanker

        return TFRanker(ds.dense.shape[1], buckets, hp, seed, mean, std, base, prior)
    raise TrainError(f"unknown framework {framework!r} (expected one of {', '.join(FRAMEWORKS)})")


@dataclass
class FitResult:
    ranker: object
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    best_epoch: int = 0
    early_stopping: str = "off"


def fit(framework: str, train: Dataset, hp: dict, seed: int, val: Dataset | None = None,
        progress: Progress | None = None, watch: Dataset | None = None) -> FitResult:
    """Train a fresh ranker on ``train`` for at most ``hp["epochs"]`` epochs.

    With ``val`` (a later slice of the training window) the epoch with the lowest validation log
    loss is kept and training stops after ``hp["patience"]`` epochs without improvement (CTR models
    with large embedding tables typically overfit after one or two epochs). A model with a prior
    (wide & deep) is also scored before training ("epoch 0", the prior alone): when no epoch improves
    on it, the prior alone is kept. ``watch`` (e.g. the holdout) is only evaluated and shown per
    epoch, never used for any decision."""
    check_not_empty(train)
    progress = progress or Progress(enabled=False)
    hp = {**DEFAULT_HP, **hp}
    t_start = time.monotonic()
    ranker = make_ranker(framework, train, hp, seed)
    rng = np.random.default_rng(seed)
    bs = int(hp["batch_size"])
    n = len(train)
    steps = (n + bs - 1) // bs
    history = []
    best, best_epoch, best_state, bad = math.inf, 0, None, 0
    patience = int(hp.get("patience", 1))

    def scores(rec: dict) -> str:
        text = ""
        for key, ds in (("val", val), ("holdout", watch)):
            if ds is not None and len(ds):
                p = ranker.predict(ds.dense, ds.ids)
                rec[f"{key}_auc"] = ev.auc(ds.labels, p)
                rec[f"{key}_logloss"] = ev.logloss(ds.labels, p)
                text += f"  {key}_auc {_f(rec[f'{key}_auc'])}  {key}_logloss {rec[f'{key}_logloss']:.4f}"
        return text

    if getattr(ranker, "prior", False) and val is not None and len(val):
        rec = {"epoch": 0, "train_loss": None, "seconds": 0.0}
        text = "epoch 0 (prior alone):" + scores(rec)
        history.append(rec)
        best, best_state = rec["val_logloss"], ranker.get_state()
        progress.line(text)
    for epoch in range(1, int(hp["epochs"]) + 1):
        t0 = time.monotonic()
        perm = rng.permutation(n)
        total, seen = 0.0, 0
        label = f"epoch {epoch}/{hp['epochs']}"
        for step in range(steps):
            idx = np.sort(perm[step * bs:(step + 1) * bs])
            loss = ranker.train_batch(train.dense[idx], train.ids[idx], train.labels[idx])
            if not math.isfinite(loss):
                raise TrainError(f"training diverged at epoch {epoch} step {step + 1} (loss {loss}); lower the learning rate")
            total += loss * len(idx)
            seen += len(idx)
            progress.batch(label, step + 1, steps, total / seen, t0)
        rec = {"epoch": epoch, "train_loss": total / max(seen, 1), "seconds": time.monotonic() - t0}
        text = f"{label}: train_loss {rec['train_loss']:.4f}" + scores(rec)
        history.append(rec)
        stop = False
        if val is not None and len(val):
            if rec["val_logloss"] < best:
                best, best_epoch, best_state, bad = rec["val_logloss"], epoch, ranker.get_state(), 0
            else:
                bad += 1
                stop = bad >= patience
        progress.line(text + f"  ({rec['seconds']:.1f}s)" + (" *" if best_epoch == epoch and val is not None else ""))
        if stop:
            break
    mode = "off"
    trained = sum(1 for h in history if h["epoch"] > 0)
    if best_state is not None:
        mode = (f"kept epoch {best_epoch} of {trained} (lowest validation log loss)" if best_epoch else
                f"kept the prior alone (epoch 0): no epoch of {trained} lowered the validation log loss")
        if best_epoch != trained:
            ranker.set_state(best_state)
        progress.line(f"early stopping: {mode}")
        return FitResult(ranker, history, time.monotonic() - t_start, best_epoch, mode)
    return FitResult(ranker, history, time.monotonic() - t_start, trained, mode)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def validation_split(train: Dataset, fraction: float) -> tuple[Dataset, Dataset | None, str]:
    """The latest ``fraction`` of the training window as validation for early stopping, when it has
    both classes; else no early stopping (and a note saying why)."""
    if fraction <= 0:
        return train, None, ""
    try:
        fit_train, val = train.split_time(fraction)
        check_not_empty(fit_train)
    except DataError:
        return train, None, "early stopping off: the training window is too small to hold out a validation slice"
    if val.positives == 0 or val.positives == len(val):
        return train, None, (f"early stopping off: the validation slice ({len(val)} rows) has "
                             f"{val.positives} positives")
    return fit_train, val, ""


# --------------------------------------------------------------------------------------------
# model.json pieces


def signature(ds: Dataset) -> tuple[list[dict], list[dict]]:
    inputs = [{"name": "dense", "datatype": "FP32", "shape": [-1, len(ds.dense_features)]},
              {"name": "ids", "datatype": "INT64", "shape": [-1, len(ds.id_features)]}]
    outputs = [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    return inputs, outputs


def _metric_block(m: dict | None) -> dict | None:
    if m is None:
        return None
    return {k: m.get(k) for k in ("auc", "auc_ci", "logloss", f"recall@{RANK_K}", f"ndcg@{RANK_K}", "rows", "positives",
                                  "ranking_groups")}


@dataclass
class Production:
    """The production model to compare with: its version and a scorer, or why there is none."""

    version: str | None = None
    meta: dict | None = None
    path: Path | None = None
    note: str = ""


def production_version_from_deployments(name: str, timeout_s: float = 10.0, platform=None) -> tuple[str | None, str]:
    """Replay the control topic (``deployments.log.replay``) and return the production version of
    ``name``; ``(None, why)`` when it cannot be read."""
    try:
        from recpilot.models.deployments.log import replay
        from recpilot.models.deployments.state import DeploymentSettings
    except ImportError as exc:
        return None, f"deployment state not available ({exc})"
    try:
        from recpilot.settings import PlatformSettings, load

        if platform is None:
            platform = load(PlatformSettings)
        topic = load(DeploymentSettings).topic  # RECPILOT_DEPLOY_TOPIC, as for `recpilot models`
        book = replay(platform, topic, timeout=timeout_s)
        version = book.state(name).production_version
    except Exception as exc:  # noqa: BLE001 - any failure here only means "no comparison"
        return None, f"deployment state not available ({type(exc).__name__}: {str(exc)[:200]})"
    return (version or None), ("" if version else f"no production version of {name!r} in the deployment state")


def evaluate_production(prod: Production, holdout: Dataset) -> tuple[dict | None, str]:
    if prod.version is None or prod.meta is None:
        return None, prod.note or "no production model"
    meta = prod.meta
    if (meta.get("feature_set") != holdout.feature_set or list(meta.get("dense_features") or []) != list(holdout.dense_features)
            or [list(x) for x in meta.get("id_features") or []] != [list(x) for x in holdout.id_features]):
        return None, (f"production version {prod.version} uses other features (feature_set {meta.get('feature_set')!r}); "
                      "not comparable on this holdout")
    from recpilot.models.loader import ModelLoadError, load_model

    try:
        model = load_model(prod.path, meta, device="cpu")
        p = model.predict(holdout.dense, holdout.ids)
    except (ModelLoadError, ValueError) as exc:
        return None, f"production version {prod.version} could not be scored: {exc}"
    # the scores ride along for the paired AUC difference (_metric_block leaves them out of model.json)
    return {**ev.evaluate_scores(holdout.labels, p, holdout.groups, RANK_K), "scores": p}, f"production version {prod.version}"


# --------------------------------------------------------------------------------------------
# the whole job


@dataclass
class TrainReport:
    name: str
    version: str | None
    framework: str
    meta: dict
    history: list[dict]
    seconds: float
    ranker: object = None


def train_and_register(ds: Dataset, framework: str, *, name: str = "ranker", hp: dict | None = None, seed: int = 0,
                       holdout_fraction: float = 0.2, repository=None, production: Production | None = None,
                       progress: Progress | None = None, register: bool = True,
                       drift_reference: bool = True) -> TrainReport:
    """Split, train, evaluate, export. With ``register=False`` the model is evaluated but not written.
    ``drift_reference=False`` leaves model.json's ``reference`` empty: for data that is not the shop's
    traffic (the bootstrap ranker's generated impressions), whose histograms would make every
    serving window look like drift; the monitor then gives that version no drift verdict."""
    if framework not in FRAMEWORKS:
        raise TrainError(f"unknown framework {framework!r} (expected one of {', '.join(FRAMEWORKS)})")
    progress = progress or Progress(enabled=False)
    hp = {**DEFAULT_HP, **(hp or {})}
    check_not_empty(ds)
    train, holdout = ds.split_time(holdout_fraction)
    check_not_empty(train)
    if len(holdout) == 0:
        raise DataError(f"{ds.source}: the holdout is empty")
    progress.line(f"data: {ds.source}: {len(ds)} rows ({ds.positives} positives); train {len(train)} "
                  f"({train.positives} pos), holdout {len(holdout)} ({holdout.positives} pos), feature_set {ds.feature_set}")
    fit_train, val, es_note = validation_split(train, float(hp.get("validation_fraction", 0.0)))
    if es_note:
        progress.line(es_note)
    res = fit(framework, fit_train, hp, seed, val=val, progress=progress, watch=holdout)
    ranker = res.ranker
    p_model = ranker.predict(holdout.dense, holdout.ids)
    m_model = ev.evaluate_scores(holdout.labels, p_model, holdout.groups, RANK_K, seed=seed)
    p_pop = ev.popularity_scores(train.items, train.labels, holdout.items)
    m_pop = ev.evaluate_scores(holdout.labels, p_pop, holdout.groups, RANK_K, seed=seed)
    m_prod, prod_note = evaluate_production(production or Production(note="no production model given"), holdout)
    vs_pop = ev.auc_diff(holdout.labels, p_model, p_pop, seed=seed)
    vs_prod = None if m_prod is None else ev.auc_diff(holdout.labels, p_model, m_prod["scores"], seed=seed)
    all_scores = ranker.predict(ds.dense, ds.ids)
    inputs, outputs = signature(ds)
    notes = []
    if m_prod is not None:
        p_end = ((production.meta or {}).get("training") or {}).get("data_window", {}).get("end_ms")
        if isinstance(p_end, int) and p_end >= holdout.window()["start_ms"]:
            notes.append(f"production version {production.version} was trained on data up to {p_end}, which overlaps "
                         "this holdout: its metrics here are optimistic")
    flat = constant_score_note(p_model)
    if flat:
        notes.append(flat)
    if holdout.positives < 100:
        notes.append(f"only {holdout.positives} positives in the holdout: metrics are noisy, see auc_ci")
    meta = {
        "name": name,
        "framework": framework,
        "artifact": ranker.artifact,
        "created_ms": int(time.time() * 1000),
        "inputs": inputs,
        "outputs": outputs,
        "feature_set": ds.feature_set,
        "dense_features": list(ds.dense_features),
        "id_features": [[n, int(b)] for n, b in ds.id_features],
        "training": {
            "source": ds.source,
            "rows": len(train),
            "positives": train.positives,
            "data_window": train.window(),
            "holdout": {"rows": len(holdout), "positives": holdout.positives, "data_window": holdout.window(),
                        "fraction": holdout_fraction},
            "seed": seed,
            "hyperparameters": hp,
            "seconds": round(res.seconds, 3),
            "epochs": [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items()} for h in res.history],
            "best_epoch": res.best_epoch,
            "early_stopping": res.early_stopping + (f"; {es_note}" if es_note else ""),
            "fit_rows": len(fit_train),
            "validation_rows": len(val) if val is not None else 0,
            "parameters": ranker.num_params(),
        },
        "metrics": {
            **_metric_block(m_model),
            "baseline": {**_metric_block(m_pop), "kind": "popularity (smoothed item CTR in the training window)",
                         "auc_diff": None if vs_pop is None else vs_pop["diff"],  # model minus baseline, paired CI
                         "auc_diff_ci": None if vs_pop is None else vs_pop["ci"]},
            "production": (None if m_prod is None else {
                **_metric_block(m_prod), "version": production.version,
                "auc_diff": None if vs_prod is None else vs_prod["diff"],  # model minus production, paired CI
                "auc_diff_ci": None if vs_prod is None else vs_prod["ci"]}),
            "production_note": prod_note,
            "ranking_groups": m_model["ranking_groups"],
            "ranking_group_kind": ds.extra.get("ranking_groups", ""),
            "holdout": "time-based: the latest rows by timestamp",
            "notes": notes,
        },
        "reference": ev.reference_summary(ds.dense, ds.dense_features, all_scores) if drift_reference else {},
    }
    progress.line("holdout metrics:\n" + ev.format_table(
        {"model": m_model, "popularity": m_pop, "production": m_prod}, RANK_K)
        + (f"\nproduction: {prod_note}" if m_prod is None else ""))
    version = None
    if register:
        if repository is None:
            from recpilot.models.repository import ModelRepository

            repository = ModelRepository()
        sample = np.arange(min(len(holdout), 2048))

        def writer(staging: Path) -> dict:
            ranker.export(staging)
            check = export_check(staging, meta, holdout.dense[sample], holdout.ids[sample], ranker.predict(
                holdout.dense[sample], holdout.ids[sample]))
            out = dict(meta)
            out["training"] = {**meta["training"], "export_check_max_abs_diff": check}
            return out

        version = repository.create_version(name, writer)
        meta = repository.meta(name, version)
    return TrainReport(name, version, framework, meta, res.history, res.seconds, ranker)


def constant_score_note(scores: np.ndarray, tol: float = 1e-7) -> str | None:
    """A note when the model scores every holdout row (nearly) the same: it ranks nothing, and its AUC of
    0.5 is by construction. On data without a learnable signal, early stopping on validation log loss
    can pick such a model (the base rate is the best calibrated answer there); say so, do not hide it."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) and float(np.ptp(scores)) <= tol:
        return (f"the model gives every holdout row the same score ({scores[0]:.6g}): it ranks nothing, "
                "and its AUC of 0.5 is by construction; it learned no signal from this data")
    return None


def export_check(directory: Path, meta: dict, dense: np.ndarray, ids: np.ndarray, expected: np.ndarray) -> float:
    """Reload the exported artifact through the serving loader; fail unless it reproduces the scores."""
    from recpilot.models.loader import load_model

    loaded = load_model(directory, meta, device="cpu", verify=False)  # the staging dir: no manifest yet
    got = loaded.predict(dense, ids)
    diff = float(np.max(np.abs(got - expected))) if len(got) else 0.0
    if not diff <= EXPORT_TOLERANCE:
        raise TrainError(f"exported model does not reproduce the trained scores (max |diff| {diff:.3g} > {EXPORT_TOLERANCE})")
    return diff


def resolve_production(name: str, repository, version: str | None = None, use_deployments: bool = True,
                       timeout_s: float = 10.0) -> Production:
    """Find the production model of ``name``: an explicit ``version``, else the deployment state."""
    note = ""
    if version is None and use_deployments:
        if not repository.versions(name):
            return Production(note=f"no versions of {name!r} in the repository yet")
        version, note = production_version_from_deployments(name, timeout_s)
    if version is None:
        return Production(note=note or "production comparison skipped")
    try:
        meta = repository.meta(name, version)
        return Production(version, meta, repository.path(name, version), "")
    except Exception as exc:  # noqa: BLE001 - ModelRepositoryError
        return Production(note=f"production version {version} unreadable: {exc}")
