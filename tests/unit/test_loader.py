"""The model loader: corrupt or mismatched artifacts give ModelLoadError with a clear message, and
files that do not match the version's manifest are refused before any framework reads them."""

from __future__ import annotations

import numpy as np
import pytest

from recpilot.models.loader import LoadedModel, ModelLoadError, load_model
from recpilot.models.repository import file_manifest


def _meta(framework: str, d: int = 3, k: int = 2) -> dict:
    return {"name": "m", "version": "1", "framework": framework,
            "artifact": "model.pt" if framework == "torch" else "saved_model",
            "inputs": [{"name": "dense", "datatype": "FP32", "shape": [-1, d]},
                       {"name": "ids", "datatype": "INT64", "shape": [-1, k]}],
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}]}


def _sealed(path, meta: dict) -> dict:
    """``meta`` with the manifest of the files now in ``path``, as the repository writes it."""
    return {**meta, "files": file_manifest(path)}


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="directory not found"):
        load_model(tmp_path / "nope", _meta("torch"))


def test_unknown_framework(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown framework 'onnx'"):
        load_model(tmp_path, _sealed(tmp_path, {**_meta("torch"), "framework": "onnx"}))


def test_corrupt_torchscript(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"this is not a zip archive")
    with pytest.raises(ModelLoadError, match="not a loadable TorchScript model"):
        load_model(tmp_path, _sealed(tmp_path, _meta("torch")))


def test_missing_torch_artifact(tmp_path):
    with pytest.raises(ModelLoadError, match="TorchScript artifact not found"):
        load_model(tmp_path, _sealed(tmp_path, _meta("torch")))


def test_corrupt_saved_model(tmp_path):
    sm = tmp_path / "saved_model"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ModelLoadError, match="not a loadable SavedModel"):
        load_model(tmp_path, _sealed(tmp_path, _meta("tensorflow")))


def test_torch_model_with_wrong_input_width_is_refused(tmp_path):
    import torch

    class Two(torch.nn.Module):
        def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            w = torch.ones(5)
            return torch.sigmoid(dense @ w + ids.sum(1).float())

    torch.jit.script(Two()).save(str(tmp_path / "model.pt"))
    with pytest.raises(ModelLoadError, match="cannot score inputs of its declared shape"):
        load_model(tmp_path, _sealed(tmp_path, _meta("torch", d=3)))
    ok = load_model(tmp_path, _sealed(tmp_path, _meta("torch", d=5, k=2)), device="cpu")
    got = ok.predict(np.ones((2, 5), np.float32), np.zeros((2, 2), np.int64))
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-5.0)), rtol=1e-6)
    with pytest.raises(ValueError, match="expects 5 dense features"):
        ok.predict(np.ones((2, 4), np.float32), np.zeros((2, 2), np.int64))


def test_predict_checks_shapes_and_handles_empty():
    m = LoadedModel("m", "1", "torch", "cpu", {}, lambda d, i: np.full(len(d), 0.5, np.float32), 3, 2)
    assert m.predict(np.zeros((0, 3)), np.zeros((0, 2))).shape == (0,)
    out = m.predict(np.zeros((4, 3)), np.zeros((4, 2)))
    assert out.dtype == np.float32 and list(out) == [0.5] * 4
    with pytest.raises(ValueError, match="same N"):
        m.predict(np.zeros((4, 3)), np.zeros((3, 2)))


def _constant_module(value: float):
    import torch

    class Const(torch.nn.Module):
        def __init__(self, v: float) -> None:
            super().__init__()
            self.v = v

        def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return torch.full((dense.shape[0],), self.v)

    return torch.jit.script(Const(value))


def test_changed_artifact_is_refused_before_the_framework_reads_it(tmp_path, monkeypatch):
    import torch

    _constant_module(0.25).save(str(tmp_path / "model.pt"))
    meta = _sealed(tmp_path, _meta("torch"))
    assert float(load_model(tmp_path, meta, device="cpu").predict(np.ones((1, 3)), np.zeros((1, 2)))[0]) == 0.25
    # another valid TorchScript file put in its place: it would load and score without the check
    _constant_module(0.75).save(str(tmp_path / "model.pt"))
    opened = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **kw: opened.append(a) or real_load(*a, **kw))
    with pytest.raises(ModelLoadError, match=r"model m/1 failed verification: model.pt: .*content changed"):
        load_model(tmp_path, meta, device="cpu")
    (tmp_path / "helper.py").write_text("print('hi')\n")
    with pytest.raises(ModelLoadError, match="helper.py: not in the manifest"):
        load_model(tmp_path, meta, device="cpu")
    assert opened == []  # the framework never saw the file


def test_a_meta_without_a_manifest_is_refused_unless_allowed(tmp_path, monkeypatch):
    monkeypatch.delenv("RECPILOT_MODEL_ALLOW_UNVERIFIED", raising=False)
    _constant_module(0.5).save(str(tmp_path / "model.pt"))
    with pytest.raises(ModelLoadError, match="has no file manifest"):
        load_model(tmp_path, _meta("torch"), device="cpu")
    monkeypatch.setenv("RECPILOT_MODEL_ALLOW_UNVERIFIED", "1")
    assert load_model(tmp_path, _meta("torch"), device="cpu").version == "1"
    monkeypatch.delenv("RECPILOT_MODEL_ALLOW_UNVERIFIED")
    # a writer reloading what it has just exported, before the repository writes the manifest
    assert load_model(tmp_path, _meta("torch"), device="cpu", verify=False).version == "1"
