"""The walls between sysout's packages (docs/architecture.md).

The import-linter contracts in pyproject.toml are the rules; ``lint-imports`` (``make lint``, CI)
checks the code against them. These tests check the checker and the doc:

- ``lint-imports`` passes on this tree and fails on a copy of it with wrong imports added, one per
  contract (a lazy import inside a function among them), so every contract is shown to bite;
- the "may import" column of docs/architecture.md's table equals what the contracts allow: each
  pair of packages is put to import-linter's own contract classes as a one-import graph, so the
  doc cannot drift from pyproject.toml and the test does not re-implement any contract's meaning;
- the doc's layer picture is the layers contract's list;
- every package of ``sysout`` has a row there and a line in the README's "Code layout", in an
  order where each package comes after everything it may import.

``python tests/test_architecture.py`` prints the column as the contracts give it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

pytest.importorskip("importlinter", reason="import-linter is in the dev extra: make install")

import grimp  # noqa: E402  (import-linter's dependency)
from importlinter import api  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
README = ROOT / "README.md"

# import-linter's built-in contract types, by the dotted paths its configuration also accepts.
CONTRACT_CLASSES = {
    "layers": "importlinter.contracts.layers.LayersContract",
    "forbidden": "importlinter.contracts.forbidden.ForbiddenContract",
    "protected": "importlinter.contracts.protected.ProtectedContract",
    "independence": "importlinter.contracts.independence.IndependenceContract",
}

# One wrong import per contract, written into a copy of the tree: path, source, the line that
# lint-imports must print. The layers contract gets two: a lazy import, and a package without a
# layer.
WRONG_IMPORTS = [
    (
        "sysout/data/x.py",
        "def f():\n    from sysout.outliers import rules\n\n    return rules\n",
        "sysout.data.x -> sysout.outliers.rules",
    ),
    ("sysout/newpackage/__init__.py", "", "sysout.newpackage"),
    ("sysout/outliers/x.py", "import sysout.data  # noqa\n", "sysout.outliers.x -> sysout.data"),
    ("sysout/model/x.py", "import sysout.kernels  # noqa\n", "sysout.model.x -> sysout.kernels"),
    ("sysout/attention/x.py", "import triton  # noqa\n", "sysout.attention.x -> triton"),
    ("sysout/compress/x.py", "import lightning  # noqa\n", "sysout.compress.x -> lightning"),
]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` as ``make lint`` runs it; it analyses the ``sysout`` found from ``cwd``
    (import-linter puts the working directory first on ``sys.path``, before the editable
    install)."""
    command = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"
    return subprocess.run(
        [sys.executable, "-c", command, "--no-cache"],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},  # no wrapped lines in the report
        capture_output=True,
        text=True,
        timeout=120,
    )


def packages() -> list[str]:
    """The packages of sysout, from the tree."""
    return sorted(p.parent.name for p in (ROOT / "sysout").glob("*/__init__.py"))


@cache
def contracts() -> tuple:
    config = api.read_configuration(str(ROOT / "pyproject.toml"))
    built = []
    for options in config["contracts_options"]:
        module, _, name = CONTRACT_CLASSES[options["type"]].rpartition(".")
        cls = getattr(__import__(module, fromlist=[name]), name)
        built.append(cls(options["name"], config["session_options"], options))
    return tuple(built)


def outside_modules() -> set[str]:
    """The modules outside sysout that the contracts name (triton, lightning ...)."""
    names = set()
    for contract in contracts():
        for field in ("forbidden_modules", "protected_modules"):
            for expression in contract.contract_options.get(field, []):
                if not expression.startswith("sysout"):
                    names.add(expression)
    return names


def allowed(importer: str, imported: str) -> bool:
    """Whether every contract is kept when ``sysout.<importer>`` imports ``sysout.<imported>``."""
    for contract in contracts():
        graph = grimp.ImportGraph()
        graph.add_module("sysout")
        for package in packages():
            graph.add_module(f"sysout.{package}")
        for name in outside_modules():
            graph.add_module(name, is_squashed=True)
        graph.add_import(importer=f"sysout.{importer}", imported=f"sysout.{imported}")
        if not contract.check(graph, verbose=False).kept:
            return False
    return True


def allowed_imports() -> dict[str, set[str]]:
    return {a: {b for b in packages() if b != a and allowed(a, b)} for a in packages()}


def doc_table() -> dict[str, list[str]]:
    """docs/architecture.md's table: package -> the packages in its "may import" cell, in the
    table's row order."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        match = re.fullmatch(r"`sysout\.(\w+)`", cells[0]) if len(cells) == 3 else None
        if match:
            rows[match.group(1)] = re.findall(r"`(\w+)`", cells[2])
    return rows


def doc_layers() -> list[str]:
    """The lines of docs/architecture.md's layer picture (the code block under "## Layers"),
    without their comments."""
    block = DOC.read_text().split("## Layers", 1)[1].split("```", 2)[1]
    return [re.split(r"\s{2,}", line.strip())[0] for line in block.strip().splitlines()]


def readme_layout() -> list[str]:
    """The packages of the README's "Code layout" block, in order."""
    text = README.read_text()
    block = text.split("## Code layout", 1)[1].split("```", 2)[1]
    return re.findall(r"^sysout/(\w+)/", block, flags=re.MULTILINE)


def test_contracts_are_kept_by_this_tree():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_wrong_import_breaks_each_contract(tmp_path):
    shutil.copytree(
        ROOT / "sysout", tmp_path / "sysout", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for path, source, _ in WRONG_IMPORTS:
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(source)

    result = lint_imports(tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    count = len(contracts())
    assert f"0 kept, {count} broken" in output, output
    for _, _, line in WRONG_IMPORTS:
        assert line in output, f"{line!r} not reported:\n{output}"


def test_doc_table_matches_the_contracts():
    rows = doc_table()
    assert sorted(rows) == packages(), "docs/architecture.md needs one row per sysout package"
    expected = allowed_imports()
    wrong = {
        package: (sorted(rows[package]), sorted(expected[package]))
        for package in packages()
        if set(rows[package]) != expected[package] or len(rows[package]) != len(set(rows[package]))
    }
    assert not wrong, "docs/architecture.md's 'may import' column differs from the contracts " + (
        "(package: (doc, contracts)): " + repr(wrong)
    )


def test_doc_layers_are_the_contract_layers():
    (layers,) = [c for c in contracts() if c.contract_options["type"] == "layers"]
    assert doc_layers() == layers.contract_options["layers"], (
        "docs/architecture.md's layer picture differs from pyproject.toml's layers contract"
    )


def test_rows_and_readme_follow_the_layers():
    """Both lists name every package once, each after everything it may import."""
    expected = allowed_imports()
    for name, order in (("docs/architecture.md", list(doc_table())), ("README", readme_layout())):
        assert sorted(order) == packages(), f"{name} must list every sysout package once"
        for position, package in enumerate(order):
            later = expected[package] & set(order[position:])
            assert not later, f"{name}: {package} may import {sorted(later)}, listed after it"


if __name__ == "__main__":
    order = [p for p in doc_table() if p in packages()] + sorted(set(packages()) - set(doc_table()))
    expected = allowed_imports()
    for package in order:
        imports = ", ".join(f"`{name}`" for name in order if name in expected[package]) or "—"
        print(f"`sysout.{package}`: {imports}")
