"""Architecture rules, enforced by reading the source (AST), not by convention.

1. **The math package is pure.** No module in ``perpmargin/math/`` may import the stateful
   layers (``perpmargin.state``, ``engine``, ``ledger``, ``risk``, ``journal``) or any adapter
   (CLI, demo, batch kernels, services…). Rather than list every adapter that exists today,
   the rule is an allow-list: math modules import only the standard library,
   :data:`MATH_MAY_IMPORT` and each other. Relative imports and ``importlib.import_module`` /
   ``__import__`` calls with a literal name count too, and so do imports under
   ``if TYPE_CHECKING:`` (a type-only import still couples the layers).
2. **No binary floats in money code.** The modules of the ledger → engine → risk → state →
   math path, plus the two they compute through (``numbers``, ``config``), may not call
   ``float(...)``, write a float or complex literal, use float-valued ``math`` functions
   (``sqrt``, ``exp``, ``log``…: only the exact integer ones are allowed), import ``numpy``,
   or write ``int(a / b)`` (true division then truncation: ``numbers.py`` says to use
   ``div_round``). Documented exceptions go in :data:`FLOAT_ALLOWED` with the reason; there
   are none today. ``isinstance(x, float)`` is fine: it *refuses* floats.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import perpmargin

SRC = Path(perpmargin.__file__).parent
MATH_DIR = SRC / "math"

MATH_FORBIDDEN = (
    "perpmargin.state",
    "perpmargin.engine",
    "perpmargin.ledger",
    "perpmargin.risk",
    "perpmargin.journal",
)
"""Named in the rule; also excluded by the allow-list, listed for a clearer failure message."""

MATH_MAY_IMPORT = ("perpmargin.errors", "perpmargin.numbers", "perpmargin.math")
"""The only perpmargin modules (and packages) a math module may import: values in, values out."""

MONEY_MODULES = ("ledger.py", "engine.py", "risk.py", "state.py", "numbers.py", "config.py")
"""Top-level modules of the money path (the math package is added to them)."""

EXACT_MATH_FUNCTIONS = frozenset({"isqrt", "gcd", "lcm", "comb", "perm", "factorial", "floor", "ceil", "trunc", "prod"})
"""``math`` functions that are exact on ints and Fractions (``floor(Fraction)`` uses ``__floor__``)."""

FLOAT_ALLOWED: dict[tuple[str, str], str] = {}
"""``(module path relative to perpmargin/, offending source text)`` → why it is acceptable."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(path: Path) -> str:
    name = _module_name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


@dataclass(frozen=True)
class Import:
    module: str
    line: int


def imports_of(source: str, path: Path) -> list[Import]:
    """Every module ``source`` imports, relative imports resolved against ``path``'s package."""
    found: list[Import] = []
    package = _package_of(path)
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                anchor = ".".join(base)
                target = f"{anchor}.{node.module}" if node.module else anchor
            else:
                target = node.module or ""
            found.append(Import(target, node.lineno))
            # `from perpmargin import state` imports the submodule perpmargin.state.
            found += [Import(f"{target}.{alias.name}", node.lineno) for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Name) and func.id == "__import__") or (
                isinstance(func, ast.Attribute) and func.attr == "import_module"
            )
            if dynamic and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append(Import(node.args[0].value, node.lineno))
    return found


def _is_within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def math_import_violations(source: str, path: Path) -> list[str]:
    bad = []
    for imp in imports_of(source, path):
        top = imp.module.split(".")[0]
        if top == "perpmargin":
            if imp.module == "perpmargin":
                continue  # `from perpmargin import x` is judged by its `perpmargin.x` entry
            if not any(_is_within(imp.module, ok) for ok in MATH_MAY_IMPORT):
                why = "a stateful layer" if any(_is_within(imp.module, f) for f in MATH_FORBIDDEN) else "not pure"
                bad.append(f"line {imp.line}: imports {imp.module} ({why})")
        elif top not in sys.stdlib_module_names and top != "__future__":
            bad.append(f"line {imp.line}: imports third-party {imp.module}")
    return bad


def _is_true_division(node: ast.expr) -> bool:
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)


def float_violations(source: str, path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        problem = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "float":
                problem = "float() call"
            elif node.func.id == "int" and node.args and _is_true_division(node.args[0]):
                problem = "int(a / b): true division through a float; use div_round"
        elif isinstance(node, ast.Constant) and type(node.value) in (float, complex):
            problem = f"float literal {node.value!r}"
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math":
            if node.attr not in EXACT_MATH_FUNCTIONS:
                problem = f"math.{node.attr} is float-valued"
        elif isinstance(node, ast.ImportFrom) and node.module == "math":
            inexact = [a.name for a in node.names if a.name not in EXACT_MATH_FUNCTIONS]
            if inexact:
                problem = f"imports float-valued math.{', math.'.join(inexact)}"
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in ("numpy", "cmath", "statistics") for n in names):
                problem = f"imports {', '.join(names)} (float arithmetic)"
        if problem is None:
            continue
        text = ast.get_source_segment(source, node) or ""
        rel = str(path.relative_to(SRC))
        if (rel, text) not in FLOAT_ALLOWED:
            lineno = getattr(node, "lineno", 0)
            bad.append(f"line {lineno}: {problem}: {text}")
    return bad


MATH_MODULES = sorted(MATH_DIR.glob("*.py"))
MONEY_PATH = [SRC / name for name in MONEY_MODULES] + MATH_MODULES


def test_the_scans_see_the_modules_they_guard() -> None:
    names = {p.name for p in MATH_MODULES}
    assert {"__init__.py", "margin.py", "collateral.py", "liquidation.py"} <= names
    assert all(p.is_file() for p in MONEY_PATH)


@pytest.mark.parametrize("path", MATH_MODULES, ids=lambda p: f"perpmargin.math.{p.stem}")
def test_math_module_imports_nothing_stateful(path: Path) -> None:
    assert math_import_violations(path.read_text(encoding="utf-8"), path) == []


@pytest.mark.parametrize("path", MONEY_PATH, ids=lambda p: str(p.relative_to(SRC)))
def test_money_module_has_no_binary_floats(path: Path) -> None:
    assert float_violations(path.read_text(encoding="utf-8"), path) == []


def test_every_float_exception_is_still_needed() -> None:
    """An allow-list entry whose code is gone must be removed, so the list stays honest."""
    for rel, text in FLOAT_ALLOWED:
        assert text in (SRC / rel).read_text(encoding="utf-8"), (rel, text)


# -- the checkers themselves catch what they should ------------------------------------------

FAKE_MATH = MATH_DIR / "fake.py"

IMPORT_SNIPPETS = {
    "an absolute import of the engine": ("from perpmargin.engine import Engine", True),
    "a relative import of state from the parent package": ("from ..state import EngineState", True),
    "a relative import of the ledger module": ("from .. import ledger", True),
    "a plain import of risk": ("import perpmargin.risk", True),
    "the journal imported under TYPE_CHECKING": (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from perpmargin.journal import Journal",
        True,
    ),
    "an adapter (the CLI)": ("from perpmargin import cli", True),
    "a dynamic import of the engine": ("import importlib\nimportlib.import_module('perpmargin.engine')", True),
    "a third-party package": ("import numpy as np", True),
    "a sibling math module": ("from .margin import BracketTable", False),
    "the numbers module": ("from perpmargin.numbers import div_round", False),
    "the errors module": ("from perpmargin.errors import ConfigError", False),
    "the standard library": ("from fractions import Fraction\nimport enum", False),
}


@pytest.mark.parametrize(("snippet", "violates"), IMPORT_SNIPPETS.values(), ids=list(IMPORT_SNIPPETS))
def test_the_import_rule_catches(snippet: str, violates: bool) -> None:
    assert bool(math_import_violations(snippet, FAKE_MATH)) is violates


FLOAT_SNIPPETS = {
    "a float() call": ("x = float(q)", True),
    "a float literal": ("rate = 0.004", True),
    "a float literal in scientific notation": ("eps = 1e-9", True),
    "int of a true division": ("n = int(a / b)", True),
    "math.sqrt": ("import math\nr = math.sqrt(n)", True),
    "from math import log": ("from math import log", True),
    "numpy": ("import numpy as np", True),
    "an integer division": ("n = a // b", False),
    "isqrt": ("from math import isqrt\nr = isqrt(n)", False),
    "a Fraction": ("from fractions import Fraction\nx = Fraction(1, 3)", False),
    "refusing a float": ("ok = not isinstance(v, float)", False),
}


@pytest.mark.parametrize(("snippet", "violates"), FLOAT_SNIPPETS.values(), ids=list(FLOAT_SNIPPETS))
def test_the_float_rule_catches(snippet: str, violates: bool) -> None:
    assert bool(float_violations(snippet, SRC / "engine.py")) is violates


ADAPTERS = ("perpmargin.stress", "perpmargin.service", "perpmargin.cli", "perpmargin.demo")
"""Adapter layers (stress lab, service, command line): they drive the engine; the core never imports them."""

CORE_MODULES = sorted(
    [SRC / n for n in (*MONEY_MODULES, "journal.py", "liquidation.py", "prices.py", "storage.py", "commands.py")]
    + list((SRC / "batch").glob("*.py"))
    + MATH_MODULES
)


def adapter_import_violations(source: str, path: Path) -> list[str]:
    return [
        f"line {imp.line}: imports the adapter {imp.module}"
        for imp in imports_of(source, path)
        if any(imp.module == a or imp.module.startswith(a + ".") or imp.module.startswith(a + "_") for a in ADAPTERS)
    ]


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_the_core_never_imports_an_adapter(path: Path) -> None:
    assert adapter_import_violations(path.read_text(encoding="utf-8"), path) == []


@pytest.mark.parametrize(
    ("snippet", "violates"),
    [
        ("from perpmargin.stress.runner import run_stress", True),
        ("import perpmargin.service.app", True),
        ("from perpmargin import cli_stress", True),
        ("from perpmargin.batch import risk_snapshot", False),
        ("from perpmargin.journal import replay", False),
    ],
    ids=["the stress lab", "the service", "a CLI module", "the batch kernel is core", "the journal is core"],
)
def test_the_adapter_rule_catches(snippet: str, violates: bool) -> None:
    assert bool(adapter_import_violations(snippet, SRC / "engine.py")) is violates
