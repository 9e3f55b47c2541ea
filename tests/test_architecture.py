"""docs/architecture.md's import table is the rule: every part imports exactly what it lists.

The folders come from pyproject.toml's `package-dir`, the rules from the Markdown table, and
the imports from each file's syntax tree, so the document cannot drift from the code.
"""

from __future__ import annotations

import ast
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest depends on tomli before Python 3.11
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOC = Path("docs/architecture.md")
TENSORFLOW = {"tensorflow", "tf_keras", "tensorflow_model_optimization"}
_BACKTICKED = re.compile(r"`([^`]+)`")
# A string that is a whole dotted pocketrec module name is loaded by name somewhere
# (`core/cli.py`'s subcommand modules, `python -m ...`), so it counts as an import.


@dataclass(frozen=True)
class Row:
    """One row of the table: the parts it covers and what they may and must never import."""

    folders: frozenset[str]
    imports: tuple[str, ...]
    may: frozenset[str]
    never: frozenset[str]

    @property
    def label(self) -> str:
        return self.imports[0].removeprefix("pocketrec.")


def package_folders(root: Path) -> dict[str, str]:
    """Package -> folder, from pyproject.toml's `packages` and `package-dir`."""
    tool = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]
    mapping: dict[str, str] = tool["setuptools"]["package-dir"]
    folders = {}
    for package in tool["setuptools"]["packages"]:
        base = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        rest = package[len(base) :].lstrip(".").replace(".", "/")
        folders[package] = f"{mapping[base]}/{rest}".rstrip("/")
    return folders


def table_rows(root: Path) -> list[Row]:
    """The rows of the table whose header starts with `| folder | import |`."""
    lines = (root / DOC).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| folder | import |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True))
        names = {column: _BACKTICKED.findall(cells[column]) for column in header}
        rows.append(
            Row(
                folders=frozenset(names["folder"]),
                imports=tuple(names["import"]),
                may=frozenset(names["may import"]),
                never=frozenset(names["never"]),
            )
        )
    return rows


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import that runs, at any depth.

    Imports under `if TYPE_CHECKING:` never run and are left out;
    `importlib.import_module("literal")` counts.
    """
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            for child in node.orelse if name == "TYPE_CHECKING" else [*node.body, *node.orelse]:
                self.visit(child)

        def visit_Import(self, node: ast.Import) -> None:
            found.extend((node.lineno, alias.name) for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)

        def visit_Call(self, node: ast.Call) -> None:
            function = node.func
            if (
                isinstance(function, ast.Attribute)
                and function.attr == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.append((node.lineno, node.args[0].value))
            self.generic_visit(node)

    Visitor().visit(ast.parse(source))
    return found


def architecture_violations(root: Path) -> list[str]:
    """Every way the code under `root` and its docs/architecture.md disagree."""
    folders = package_folders(root)
    rows = table_rows(root)
    problems: list[str] = []
    row_of: dict[str, Row] = {}
    for row in rows:
        for name in row.imports:
            package, _, leaf = name.rpartition(".")
            if name in folders:
                location = f"{folders[name]}/"
            elif package in folders and (root / folders[package] / f"{leaf}.py").is_file():
                location = f"{folders[package]}/{leaf}.py"
            else:
                problems.append(
                    f"{DOC} has a row for {name}, which pyproject.toml's package-dir does not "
                    "map to a folder or module; remove the row or mark it planned below the table"
                )
                continue
            row_of[name] = row
            if location not in row.folders:
                problems.append(
                    f"{DOC}'s row for {name} names the folders {sorted(row.folders)}; "
                    f"pyproject.toml puts it at `{location}`"
                )
        if row.may & row.never:
            problems.append(f"{DOC} both allows and forbids {sorted(row.may & row.never)}")
    missing = sorted(set(folders) - set(row_of))
    if missing:
        problems.append(f"{DOC} has no row for {missing}; add one per part")

    def part(module: str) -> str | None:
        prefixes = [n for n in row_of if module == n or module.startswith(n + ".")]
        return max(prefixes, key=len) if prefixes else None

    used: dict[int, set[str]] = {id(row): set() for row in rows}
    for package, folder in sorted(folders.items()):
        for path in sorted((root / folder).glob("*.py")):
            is_package = path.name == "__init__.py"
            module = package if is_package else f"{package}.{path.stem}"
            owner_name = part(module)
            if owner_name is None:
                continue
            owner = row_of[owner_name]
            shown = path.relative_to(root).as_posix()
            source = path.read_text(encoding="utf-8")
            for line, name in imported_names(source, module, is_package):
                top = name.split(".")[0]
                if top == "pocketrec":
                    target = part(name)
                    if target is None or target in owner.imports:
                        continue
                elif top in sys.stdlib_module_names:
                    continue
                else:
                    target = top
                used[id(owner)].add(target)
                if target in owner.never or target not in owner.may:
                    problems.append(
                        f"{shown} imports {target}, which {DOC} does not allow for "
                        f"{owner.label} (line {line}; allowed: {', '.join(sorted(owner.may))}"
                        "). Remove the import, or change the table if the design changed"
                    )
    for row in rows:
        unused = sorted(row.may - used[id(row)])
        if unused:
            problems.append(
                f"{DOC} allows {row.label} to import {', '.join(unused)}, which none of its "
                "files imports; remove them from the table"
            )
    return problems


def test_every_part_imports_exactly_what_docs_architecture_allows() -> None:
    problems = architecture_violations(REPO)
    assert not problems, "\n".join(problems)


def test_docs_architecture_forbids_tensorflow_in_the_sdk() -> None:
    sdk = next(row for row in table_rows(REPO) if "pocketrec.sdk" in row.imports)
    assert sdk.never >= TENSORFLOW and not sdk.may & TENSORFLOW


def test_every_folder_of_pyproject_is_read() -> None:
    folders = package_folders(REPO)
    assert folders["pocketrec"] == "core" and folders["pocketrec.data"] == "core/data"
    assert folders["pocketrec.sdk"] == "sdk" and (REPO / "sdk" / "recommender.py").is_file()


def _copy(tmp_path: Path) -> Path:
    for name in ("pyproject.toml", str(DOC)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    for folder in {f.split("/")[0] for f in package_folders(REPO).values()}:
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__py*"))
    return tmp_path


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def _edit_doc(root: Path, old: str, new: str) -> None:
    doc = root / DOC
    text = doc.read_text(encoding="utf-8")
    assert old in text
    doc.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda root: _append(root / "sdk/recommender.py", "import tensorflow\n"),
            "sdk/recommender.py imports tensorflow, which docs/architecture.md does not allow "
            "for sdk",
        ),
        (
            lambda root: _append(root / "sdk/table.py", "def _late():\n    import tf_keras\n"),
            "sdk/table.py imports tf_keras, which docs/architecture.md does not allow for sdk",
        ),
        (
            lambda root: _append(
                root / "core/data/_fetch.py", "from pocketrec.training import train\n"
            ),
            "core/data/_fetch.py imports pocketrec.training, which docs/architecture.md does "
            "not allow for data",
        ),
        (
            lambda root: _append(
                root / "core/cli.py", "importlib.import_module('tensorflow_model_optimization')\n"
            ),
            "core/cli.py imports tensorflow_model_optimization, which docs/architecture.md",
        ),
        (
            lambda root: _edit_doc(
                root, "| `numpy`, `pocketrec.errors` |", "| `pocketrec.errors` |"
            ),
            "core/data/_delimited.py imports numpy, which docs/architecture.md does not allow "
            "for data",
        ),
        (
            lambda root: _edit_doc(root, "`numpy`, `matplotlib`", "`numpy`, `scipy`, `matplotlib`"),
            "docs/architecture.md allows benchmarks to import scipy, which none of its files",
        ),
        (
            lambda root: _edit_doc(
                root,
                "\n\n## Shared contracts",
                "\n| `ios/` | `pocketrec.ios` | Swift bindings | `grpc` | |\n\n## Shared contracts",
            ),
            "docs/architecture.md has a row for pocketrec.ios, which pyproject.toml's "
            "package-dir does not map",
        ),
        (
            lambda root: _edit_doc(
                root, "| `sdk/` | `pocketrec.sdk` |", "| `device/` | `pocketrec.sdk` |"
            ),
            "pyproject.toml puts it at `sdk/`",
        ),
    ],
    ids=[
        "tensorflow imported by the sdk",
        "tf_keras imported inside an sdk function",
        "training imported by data",
        "tfmot loaded by name from the cli",
        "numpy missing from the data row",
        "an allowance nothing uses",
        "a row for a part that is not there",
        "a row naming the wrong folder",
    ],
)
def test_drift_between_code_and_docs_architecture_is_reported(tmp_path, change, message) -> None:
    root = _copy(tmp_path)
    assert architecture_violations(root) == []
    change(root)
    assert any(message in problem for problem in architecture_violations(root))


def test_imports_only_for_type_checking_are_exempt(tmp_path) -> None:
    root = _copy(tmp_path)
    _append(
        root / "sdk/recommender.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tensorflow\n",
    )
    assert architecture_violations(root) == []
