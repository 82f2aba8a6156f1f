"""The dependency rules of docs/architecture.md, as import-linter contracts (pyproject.toml,
``[tool.importlinter]``), checked on the real tree; and each kind of contract shown to fail when an
import that breaks it is added to the graph.

Static analysis only: grimp reads the source files and builds the import graph; nothing is imported
or run.
"""

from __future__ import annotations

import copy

import grimp
import pytest
from importlinter import api  # importing it configures import-linter
from importlinter.contracts.acyclic_siblings import AcyclicSiblingsContract
from importlinter.contracts.forbidden import ForbiddenContract
from importlinter.contracts.independence import IndependenceContract
from importlinter.contracts.layers import LayersContract

from recpilot.paths import REPO_ROOT

CONTRACT_TYPES = {"forbidden": ForbiddenContract, "independence": IndependenceContract,
                  "layers": LayersContract, "acyclic_siblings": AcyclicSiblingsContract}


@pytest.fixture(scope="module")
def linter():
    config = api.read_configuration(str(REPO_ROOT / "pyproject.toml"))
    session = config["session_options"]
    graph = grimp.build_graph(*session["root_packages"], cache_dir=None,
                              include_external_packages=bool(session.get("include_external_packages")))

    def contracts():
        for opts in config["contracts_options"]:
            yield CONTRACT_TYPES[opts["type"]](name=opts["name"], session_options=session, contract_options=opts)

    return graph, contracts


def _check(contract, graph):
    return contract.check(copy.deepcopy(graph), verbose=False)


def test_every_contract_is_kept(linter):
    graph, contracts = linter
    broken = []
    for c in contracts():
        check = _check(c, graph)
        if not check.kept:
            broken.append(f"{c.name}: {check.metadata}")
    assert not broken, "architecture contracts broken (run .venv/bin/lint-imports for details):\n" + "\n".join(broken)


def _contract(contracts, fragment: str):
    found = [c for c in contracts() if fragment in c.name]
    assert len(found) == 1, f"expected one contract named like {fragment!r}"
    return found[0]


@pytest.mark.parametrize("importer, imported, contract", [
    # a service reaching into another service's internals
    ("services.inference.search", "services.features.writer", "services talk to each other only"),
    ("services.ingest.pipeline", "services.inference.routing", "services talk to each other only"),
    # the serving process loading training code
    ("services.inference.routing", "recpilot.models.train", "serving process does not import training"),
    # the common package depending on a service or on the harness
    ("recpilot.kafka", "services.ingest.service", "common package imports no service"),
    ("recpilot.models.repository", "bench.inference", "common package imports no service"),
    # a service shipping harness
    ("services.features.app", "bench.features", "services import no harness"),
    # the pure deployment state reaching for Kafka
    ("recpilot.models.deployments.state", "confluent_kafka", "deployment state is pure"),
    # a cycle between sibling modules
    ("recpilot.kafka", "recpilot.stack.manager", "import cycles between sibling"),
])
def test_a_forbidden_import_breaks_its_contract(linter, importer, imported, contract):
    graph, contracts = linter
    c = _contract(contracts, contract)
    assert _check(c, graph).kept, f"{c.name} must hold on the real tree"
    bad = copy.deepcopy(graph)
    if imported not in bad.modules:
        bad.add_module(imported)
    bad.add_import(importer=importer, imported=imported, line_number=1, line_contents=f"import {imported}")
    assert not _check(c, bad).kept, f"adding {importer} -> {imported} must break {c.name!r}"
