"""Serving never unpickles: the server reads IR, JSON and images only."""

from __future__ import annotations

import ast

from tests.conftest import REPO_ROOT

SERVER_SOURCES = sorted((REPO_ROOT / "server" / "src" / "visinspect_server").rglob("*.py"))
UNPICKLING_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "torch"}


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_server_imports_nothing_that_unpickles() -> None:
    assert len(SERVER_SOURCES) >= 10
    for source in SERVER_SOURCES:
        imported = _imported_modules(ast.parse(source.read_text(), filename=str(source)))
        assert not imported & UNPICKLING_MODULES, f"{source.name} imports {imported & UNPICKLING_MODULES}"


def test_the_server_never_asks_numpy_or_anything_else_to_allow_pickles() -> None:
    for source in SERVER_SOURCES:
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                raise AssertionError(f"{source.name}:{node.value.lineno} passes allow_pickle")
            if isinstance(node, ast.Attribute) and node.attr in {"load", "loads"}:
                owner = node.value
                assert not (isinstance(owner, ast.Name) and owner.id in {"np", "numpy"}), (
                    f"{source.name}:{node.lineno} calls numpy's load (it can unpickle object arrays)"
                )


def test_the_checks_would_catch_an_unpickling_server_module() -> None:
    tree = ast.parse("import pickle\nfrom torch import load\nimport numpy as np\nnp.load('x', allow_pickle=True)\n")
    assert _imported_modules(tree) & UNPICKLING_MODULES == {"pickle", "torch"}
    assert any(isinstance(n, ast.keyword) and n.arg == "allow_pickle" for n in ast.walk(tree))
