"""The type stub of the compiled CPU module names exactly what the module exports."""

from __future__ import annotations

import ast
from pathlib import Path

import fastal


def test_cpu_stub_lists_every_export():
    from fastal import _cpu

    stub = Path(fastal.__file__).with_name("_cpu.pyi")
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    declared |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    exported = {n for n in dir(_cpu) if not n.startswith("_")}
    assert declared == exported
