"""The import graph a newcomer reads top to bottom (rules and layers in tests/import_graph.py), and
proof that each rule rejects a planted violation."""

from __future__ import annotations

import shutil
from pathlib import Path

import aftershock
import pytest

from tests import import_graph as graph

ROOT = Path(aftershock.__file__).resolve().parent


def test_every_module_has_a_layer() -> None:
    assert graph.unplaced(ROOT) == []


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    assert graph.upward_imports(ROOT) == []


def test_the_services_never_import_each_other() -> None:
    assert graph.cross_service_imports(ROOT) == []


def test_no_import_loop() -> None:
    assert graph.loops(ROOT) == []


def test_no_module_takes_another_modules_private_names() -> None:
    assert graph.private_imports(ROOT) == []


def test_no_module_reaches_into_another_modules_private_members() -> None:
    assert graph.private_member_access(ROOT) == []


def test_the_graph_sees_the_real_imports() -> None:
    """Guards the reader itself: a parser that found nothing would pass every rule above."""
    found = {(i.importer, i.imported) for i in graph.imports(ROOT)}
    assert ("aftershock.stack", "aftershock.topology") in found
    assert ("aftershock.cli", "aftershock.up") in found  # an import inside a function counts
    assert ("aftershock.edge.app", "aftershock.edge.auth") in found


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A copy of the package to plant violations in."""
    copy = tmp_path / "aftershock"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n" + code + "\n")


def test_planted_violations_are_reported(planted: Path) -> None:
    _append(planted / "clock.py", "from aftershock.stack import Stack")  # basics -> stack
    _append(planted / "edge" / "schema.py", "from aftershock.backend import router")  # service -> service
    _append(planted / "ports.py", "import aftershock.errors as errs\nerrs._hidden")  # private attribute
    _append(planted / "errors.py", "from aftershock.ports import _secret, free_port")  # private name
    _append(planted / "ports.py", "def _late() -> None:\n    from aftershock import errors")  # a loop
    _append(planted / "up.py", "def _peek(s: object) -> object:\n    return s._through_proxy")  # stack's
    (planted / "unplaced.py").write_text('"""A new module nobody placed."""\n')

    assert graph.unplaced(planted) == ["aftershock.unplaced"]
    assert any(
        v.startswith("aftershock.clock:") and "aftershock.stack" in v for v in graph.upward_imports(planted)
    )
    assert any(
        v.startswith("aftershock.edge.schema:") and "aftershock.backend.router" in v
        for v in graph.cross_service_imports(planted)
    )
    private = graph.private_imports(planted)
    assert any("aftershock.errors._hidden" in v for v in private), private
    assert any("aftershock.ports._secret" in v for v in private), private
    assert ["aftershock.errors", "aftershock.ports"] in graph.loops(planted)
    reached = graph.private_member_access(planted)
    assert any(v.startswith("aftershock.up:") and "s._through_proxy" in v for v in reached), reached
