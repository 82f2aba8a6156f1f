"""Load a model version from the repository for scoring.

``load_model(path, meta, device="auto")`` -> :class:`LoadedModel` with ``predict(dense, ids)`` ->
float32 [N] click probabilities. Only the framework the model needs is imported, inside the call.
device "auto" = CUDA when torch.cuda.is_available() (torch) / when TensorFlow sees a GPU (TF),
else CPU; "cpu", "cuda" and "cuda:N" are accepted as well.

:func:`configure_threads` records the intra-/inter-op thread counts and applies them to the
frameworks already imported; a framework imported later by :func:`load_model` gets them on import
(TensorFlow only accepts them before its runtime starts, torch's inter-op count only once; a late
call is logged, not fatal).

Before any framework opens a file, :func:`load_model` checks the version directory against the
manifest in its model.json (``recpilot.models.repository.verify_files``: every file's sha256, no
file the manifest does not list, no symbolic link); a version that fails is refused with
:class:`ModelLoadError`. Loading a TorchScript or SavedModel file runs code chosen by whoever wrote
it, so this is what stands between a changed file and the server (docs/deployments.md says what it
does not cover).
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from recpilot.errors import RecpilotError

log = logging.getLogger(__name__)

_threads: dict[str, int] = {}
_applied: set[str] = set()
_lock = threading.Lock()


class ModelLoadError(RecpilotError, RuntimeError):
    """The model artifact is missing, corrupt or does not match its model.json."""


def prepare_tensorflow_import() -> None:
    """Import triton (torch's compiler backend, installed with torch) before TensorFlow.

    Both bundle LLVM; importing triton *after* TensorFlow aborts the process ("LLVM ERROR:
    inconsistency in registered CommandLine options"), and torch imports triton lazily (e.g. when
    an optimizer is created), so a process that loads a TF model and then uses torch would die.
    In this order both work. Call before the first ``import tensorflow``; harmless otherwise."""
    if "tensorflow" in sys.modules or "triton" in sys.modules:
        return
    import importlib.util

    try:
        if importlib.util.find_spec("triton") is not None:
            import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - only an optimisation of import order
        log.debug("triton not preloaded: %s", exc)


def prepare_torch_use() -> None:
    """The other half of :func:`prepare_tensorflow_import`: when TensorFlow is already loaded and
    triton is not, hide triton from torch (torch then treats it as absent, which costs nothing on CPU
    and for TorchScript) instead of letting torch import it and abort the process."""
    if "tensorflow" in sys.modules and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # makes `import triton` raise ImportError
        log.info("tensorflow was imported before torch: triton hidden from torch to avoid an LLVM clash")


def configure_threads(intra: int, inter: int) -> None:
    with _lock:
        _threads.update(intra=int(intra), inter=int(inter))
        _applied.clear()
    for fw in ("torch", "tensorflow"):
        if fw in sys.modules:
            apply_threads(fw)


def apply_threads(framework: str) -> None:
    """Apply the configured thread counts to ``framework`` ("torch" | "tensorflow") once."""
    with _lock:
        if not _threads or framework in _applied:
            return
        _applied.add(framework)
        intra, inter = _threads["intra"], _threads["inter"]
    if framework == "torch":
        prepare_torch_use()
        import torch

        torch.set_num_threads(intra)
        try:
            torch.set_num_interop_threads(inter)
        except RuntimeError as exc:  # already set or parallel work started
            log.debug("torch inter-op threads not changed: %s", exc)
    else:
        prepare_tensorflow_import()
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
            tf.config.threading.set_inter_op_parallelism_threads(inter)
        except RuntimeError as exc:
            log.warning("tensorflow threads not changed (runtime already initialised): %s", exc)


def _shape_of(meta: dict, name: str) -> int | None:
    for spec in meta.get("inputs") or ():
        if spec.get("name") == name:
            shape = spec.get("shape") or []
            return int(shape[1]) if len(shape) == 2 and shape[1] and shape[1] > 0 else None
    return None


class LoadedModel:
    """A model ready to score. ``predict`` is thread-safe (both frameworks' inference is)."""

    def __init__(self, name: str, version: str, framework: str, device: str, meta: dict, fn, dense_dim: int | None,
                 id_dim: int | None) -> None:
        self.name = name
        self.version = version
        self.framework = framework
        self.device = device
        self.meta = meta
        self._fn = fn
        self.dense_dim = dense_dim
        self.id_dim = id_dim

    def __repr__(self) -> str:
        return f"LoadedModel({self.name}:{self.version} {self.framework} on {self.device})"

    def predict(self, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        dense = np.ascontiguousarray(dense, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if dense.ndim != 2 or ids.ndim != 2 or len(dense) != len(ids):
            raise ValueError(f"expected dense [N, D] and ids [N, K] with the same N, got {dense.shape} and {ids.shape}")
        if self.dense_dim is not None and dense.shape[1] != self.dense_dim:
            raise ValueError(f"{self.name}:{self.version} expects {self.dense_dim} dense features, got {dense.shape[1]}")
        if self.id_dim is not None and ids.shape[1] != self.id_dim:
            raise ValueError(f"{self.name}:{self.version} expects {self.id_dim} id features, got {ids.shape[1]}")
        if len(dense) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._fn(dense, ids), dtype=np.float32).reshape(-1)

    def warmup(self, batch_sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        d, k = self.dense_dim or 1, self.id_dim or 1
        for n in batch_sizes:
            self.predict(np.zeros((n, d), np.float32), np.zeros((n, k), np.int64))


def _torch_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but torch sees no CUDA device")
    return device


def _load_torch(path: Path, meta: dict, device: str):
    prepare_torch_use()
    import torch

    apply_threads("torch")
    dev = _torch_device(device)
    art = path / (meta.get("artifact") or "model.pt")
    if not art.is_file():
        raise ModelLoadError(f"{art}: TorchScript artifact not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still the format
            module = torch.jit.load(str(art), map_location=dev).eval()
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError/ValueError/... for bad files
        raise ModelLoadError(f"{art}: not a loadable TorchScript model ({type(exc).__name__}: {str(exc)[:300]})") from None

    def fn(dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if not dense.flags.writeable:  # views of a request's bytes; torch wants memory it may write
            dense = dense.copy()
        if not ids.flags.writeable:
            ids = ids.copy()
        with torch.inference_mode():
            out = module(torch.from_numpy(dense).to(dev), torch.from_numpy(ids).to(dev))
        return out.float().cpu().numpy()

    return fn, dev


def _load_tf(path: Path, meta: dict, device: str):
    prepare_tensorflow_import()
    apply_threads("tensorflow")
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if device == "auto":
        dev = "/GPU:0" if gpus else "/CPU:0"
    elif device == "cpu":
        dev = "/CPU:0"
    elif device.startswith("cuda"):
        if not gpus:
            raise ModelLoadError(f"device {device!r} requested but TensorFlow sees no GPU")
        dev = f"/GPU:{device.split(':', 1)[1] if ':' in device else 0}"
    else:
        dev = device
    art = path / (meta.get("artifact") or "saved_model")
    if not art.is_dir():
        raise ModelLoadError(f"{art}: SavedModel directory not found")
    try:
        with tf.device(dev):
            loaded = tf.saved_model.load(str(art))
        sig = loaded.signatures["serving_default"]
    except KeyError:
        raise ModelLoadError(f"{art}: SavedModel has no 'serving_default' signature") from None
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{art}: not a loadable SavedModel ({type(exc).__name__}: {str(exc)[:300]})") from None
    args = sig.structured_input_signature[1]
    if set(args) != {"dense", "ids"} or "score" not in sig.structured_outputs:
        raise ModelLoadError(f"{art}: serving signature is {sorted(args)} -> {sorted(sig.structured_outputs)}, "
                             "expected (dense, ids) -> score")

    def fn(dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
        with tf.device(dev):
            return sig(dense=tf.constant(dense), ids=tf.constant(ids))["score"].numpy()

    fn._keepalive = loaded  # the signature's variables live in `loaded`
    return fn, ("cuda" if dev.upper().startswith("/GPU") else "cpu")


def load_model(path: Path, meta: dict, device: str = "auto", *, verify: bool = True) -> LoadedModel:
    """Load and warm up the version in ``path`` described by ``meta`` (its model.json).

    ``verify`` (the default) checks the files against ``meta["files"]`` first; only a writer
    reloading the artifact it has just exported into its staging directory, before the repository
    has written a manifest, passes ``verify=False``."""
    path = Path(path)
    if not path.is_dir() and not path.is_symlink():
        raise ModelLoadError(f"{path}: model version directory not found")
    if verify:
        from recpilot.models.repository import ModelRepositoryError, verify_files

        try:
            verify_files(path, meta)
        except ModelRepositoryError as exc:
            raise ModelLoadError(str(exc)) from exc
    framework = meta.get("framework")
    if framework == "torch":
        fn, dev = _load_torch(path, meta, device)
    elif framework == "tensorflow":
        fn, dev = _load_tf(path, meta, device)
    else:
        raise ModelLoadError(f"{path}: unknown framework {framework!r} in model.json (expected tensorflow or torch)")
    model = LoadedModel(str(meta.get("name", path.parent.name)), str(meta.get("version", path.name)), framework,
                        dev, meta, fn, _shape_of(meta, "dense"), _shape_of(meta, "ids"))
    try:
        model.warmup((2,))
    except Exception as exc:  # noqa: BLE001 - a model that loads but cannot score is corrupt too
        raise ModelLoadError(f"{path}: model loaded but cannot score inputs of its declared shape: {exc}") from None
    return model
