"""The type stubs of the compiled modules name exactly what the modules export."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastal


def test_cpu_stub_lists_every_export():
    from fastal import _cpu

    stub = Path(fastal.__file__).with_name("_cpu.pyi")
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    declared |= {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    exported = {n for n in dir(_cpu) if not n.startswith("_")}
    assert declared == exported


def test_cuda_stub_lists_every_export():
    """Needs only the compiled CUDA module (no GPU): fastal._cuda imports without a device."""
    cuda = fastal._ext.cuda
    if cuda is None:
        pytest.skip("fastal was built without its CUDA module")
    stub = Path(fastal.__file__).with_name("_cuda.pyi")
    tree = ast.parse(stub.read_text())
    declared = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    exported = {n for n in dir(cuda) if not n.startswith("_")}
    assert declared == exported
