"""The training loop stays a driver: a short module of short functions
(counted from the source with ast)."""

import ast
import pathlib

LOOP = pathlib.Path(__file__).resolve().parents[1] / "siammae_jax/train/loop.py"
MAX_LINES = 300  # the module
MAX_FUNCTION_LINES = 50  # each function or method, docstring and all


def _functions(tree: ast.AST) -> dict[str, int]:
    """``name: lines`` of every function and method (nested ones too)."""
    return {
        f"{node.name}@{node.lineno}": node.end_lineno - node.lineno + 1
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_loop_is_under_300_lines():
    lines = LOOP.read_text().count("\n")
    assert lines < MAX_LINES, f"{LOOP} has {lines} lines"


def test_every_loop_function_is_under_50_lines():
    functions = _functions(ast.parse(LOOP.read_text()))
    assert "train_loop@" in " ".join(functions)  # the count sees the loop
    long = {name: n for name, n in functions.items() if n >= MAX_FUNCTION_LINES}
    assert not long, f"functions of {MAX_FUNCTION_LINES}+ lines in {LOOP}: {long}"


def test_the_count_includes_bodies_and_nested_functions():
    source = "def f():\n    def g():\n        return 1\n\n    return g\n"
    assert _functions(ast.parse(source)) == {"f@1": 5, "g@2": 2}
