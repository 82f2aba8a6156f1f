"""The serving process does not import training code: every module ``python -m services.inference``
can import (at module level or inside a function, followed through the repository's own packages)
stays clear of ``recpilot.models.train``, ``recpilot.models.data`` and the framework-specific
training modules. The first-run bootstrap that needs them runs as its own process."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN = ("recpilot", "services")
TRAINING = ("recpilot.models.train", "recpilot.models.data", "recpilot.models.ranker_torch",
            "recpilot.models.ranker_tf", "recpilot.models.bootstrap")


def _source(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(module: str, path: Path) -> set[str]:
    """Modules named by the imports of one file (``from X import Y``: X, and X.Y when Y is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if _source(f"{base}.{a.name}") is not None)
    return out


def reachable(start: str) -> set[str]:
    """The repository's own modules ``start`` may import, transitively (parents included: importing
    a.b.c runs a/__init__ and a/b/__init__)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen or module.split(".")[0] not in OWN:
            continue
        path = _source(module)
        if path is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports(module, path))
    return seen


def _training(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.startswith(TRAINING))


def test_the_serving_process_reaches_no_training_module():
    served = reachable("services.inference.__main__")
    assert {"services.inference.app", "services.inference.dataplane", "services.inference.grpc_server",
            "services.inference.bootstrap", "recpilot.models.loader"} <= served
    assert _training(served) == []


def test_the_check_sees_training_imports_where_they_are():
    # the bootstrap module itself trains: the walk must find that (also inside its functions)
    assert {"recpilot.models.train", "recpilot.models.data"} <= set(_training(reachable("recpilot.models.bootstrap")))


def test_inference_uses_only_the_feature_read_client():
    own = {m for m in reachable("services.inference.__main__") if m.startswith("services.inference")}
    reached = {(m, i) for m in own for i in _imports(m, _source(m))
               if i.startswith("services.features") and i != "services.features.client"}
    assert reached == set()
