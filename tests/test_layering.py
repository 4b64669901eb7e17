"""The layering rules, checked on the source: which package may import which.

* nodosum/transport and nodosum/membership never import each other: both reach the
  rest of the node through nodosum.port (the NodePort that Node gives them).
* mycel uses only nodosum's public names: ``nodosum.__all__``, and the modules
  ``nodosum.errors`` (the exception hierarchy) and ``nodosum.certs`` (creating a CA,
  issuing node certificates), which are documented for users too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import nodosum

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_MODULES = {"nodosum", "nodosum.errors", "nodosum.certs"}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file, nested ones too."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [alias.name for alias in node.names], node.lineno


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("source,forbidden", [("nodosum.transport", "nodosum.membership"),
                                              ("nodosum.membership", "nodosum.transport")])
def test_transport_and_membership_never_import_each_other(source: str, forbidden: str) -> None:
    found = []
    for path in modules(source):
        for target, names, line in imports(path):
            # "from nodosum import membership" names the package in the imported names
            full = [target] + [f"{target}.{name}" for name in names]
            if any(within(t, forbidden) for t in full):
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert found == []


def test_mycel_uses_only_public_nodosum_names() -> None:
    public = set(nodosum.__all__)
    found = []
    for path in modules("mycel"):
        for target, names, line in imports(path):
            if not within(target, "nodosum"):
                continue
            where = f"{path.relative_to(ROOT)}:{line}"
            if target not in PUBLIC_MODULES:
                found.append(f"{where} imports {target}")
            elif target == "nodosum":
                found.extend(f"{where} imports nodosum.{name}, not in nodosum.__all__" for name in names
                             if name not in public and f"nodosum.{name}" not in PUBLIC_MODULES)
    assert found == []


def test_the_checks_see_imports() -> None:
    # the parser finds what a violation would look like (relative, nested, aliased)
    sample = ROOT / "nodosum" / "transport" / "messaging.py"
    targets = {target for target, _, _ in imports(sample)}
    assert {"nodosum.bridge", "nodosum.transport.peers", "nodosum.errors"} <= targets
    assert all(name in dir(nodosum) or name in ("Node", "Application") for name in nodosum.__all__)
