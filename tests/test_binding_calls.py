"""Calls into the compiled modules match their signatures, checked without running them.

The callers of ``fastal._cuda`` run only on a GPU, which CI does not have, and GPU time is scarce:
an argument added to a binding and not to its caller (or the reverse) would first show there. So:

1. each stub (``_cpu.pyi``, ``_cuda.pyi``) declares the parameters, in order and with the defaults,
   of the compiled module's function (pybind11's signature line; ``_cuda`` imports without a
   device, so CI, which builds it, checks it);
2. each call ``cuda.f(...)``, ``_ext.cuda.f(...)``, ``_ext.cpu.f(...)`` or
   ``getattr(_ext.cpu, f"f_{dtype}")(...)`` in the package, its tests and its benchmarks binds to
   the stub's signature: no extra positional argument, no unknown or repeated keyword, every
   parameter without a default given.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import fastal

PACKAGE = Path(fastal.__file__).parent
ROOT = PACKAGE.parent.parent
SOURCES = [PACKAGE, ROOT / "tests", ROOT / "benchmarks"]
RECEIVERS = {
    "cpu": {"_ext.cpu", "fastal._ext.cpu"},
    "cuda": {"cuda", "_ext.cuda", "fastal._ext.cuda"},
}


@dataclass(frozen=True)
class Param:
    name: str
    has_default: bool
    keyword_only: bool = False


def _stub_functions(module: str) -> list[ast.FunctionDef]:
    tree = ast.parse((PACKAGE / f"_{module}.pyi").read_text())
    return [fn for fn in tree.body if isinstance(fn, ast.FunctionDef)]


def stub_returns(module: str) -> dict[str, str]:
    """Each stub's return annotation as written (``None``, ``int``, ``tuple[int, int]``, ...)."""
    return {fn.name: ast.unparse(fn.returns) for fn in _stub_functions(module)}


def stub_signatures(module: str) -> dict[str, list[Param]]:
    out = {}
    for fn in _stub_functions(module):
        a = fn.args
        positional = a.posonlyargs + a.args
        first_default = len(positional) - len(a.defaults)
        params = [Param(p.arg, i >= first_default) for i, p in enumerate(positional)]
        params += [
            Param(p.arg, d is not None, keyword_only=True)
            for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)
        ]
        out[fn.name] = params
    return out


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:])
    return [p.strip() for p in parts]


def compiled_signature(fn) -> list[Param]:
    """Parameters from pybind11's first docstring line, ``name(a: T, b: U = 1) -> R``."""
    line = (fn.__doc__ or "").lstrip().splitlines()[0]
    m = re.fullmatch(rf"{fn.__name__}\((.*)\) -> .*", line)
    assert m, f"{fn.__name__}: no pybind11 signature line: {line!r}"
    params, keyword_only = [], False
    for part in _split_top_level(m.group(1)):
        if part == "*":
            keyword_only = True
            continue
        name = part.split(":", 1)[0].strip()
        params.append(Param(name, "=" in part.split(":", 1)[-1], keyword_only))
    return params


def compiled_return(fn) -> str:
    """The return type of pybind11's first docstring line."""
    return (fn.__doc__ or "").lstrip().splitlines()[0].rsplit(" -> ", 1)[-1]


def _compiled_module(module: str):
    mod = getattr(fastal._ext, module)
    if mod is None:
        pytest.skip(f"fastal was built without its {module.upper()} module")
    return mod


# ids other than "cuda": that keyword marks a test as needing a GPU (conftest.py)
@pytest.mark.parametrize("module", ["cpu", "cuda"], ids=["_cpu", "_cuda"])
def test_stubs_declare_the_compiled_signatures(module):
    mod = _compiled_module(module)
    stubs = stub_signatures(module)
    compiled = {name: compiled_signature(getattr(mod, name)) for name in stubs}
    mismatched = {
        name: (compiled[name], params) for name, params in stubs.items() if compiled[name] != params
    }
    assert not mismatched, "compiled vs stub:\n" + "\n".join(
        f"{k}: {[p.name for p in c]} vs {[p.name for p in s]}" for k, (c, s) in mismatched.items()
    )
    # a value the callers read (a count, a flag) declared None, or the reverse
    returns = {name: compiled_return(getattr(mod, name)) for name in stubs}
    wrong = {
        name: (returns[name], stub)
        for name, stub in stub_returns(module).items()
        if (returns[name] == "None") != (stub == "None")
    }
    assert not wrong, "compiled vs stub returns: " + ", ".join(
        f"{k}: {c} vs {s}" for k, (c, s) in wrong.items()
    )


@dataclass(frozen=True)
class CallSite:
    where: str
    module: str
    names: tuple[str, ...]  # the stub functions the call may reach (several for getattr by dtype)
    call: ast.Call


def _getattr_names(call: ast.Call, stubs: dict[str, dict[str, list[Param]]]):
    """``getattr(<receiver>, "f" or f"f_{...}")``: the module and the stub names it can reach."""
    if not (isinstance(call.func, ast.Name) and call.func.id == "getattr" and len(call.args) == 2):
        return None
    receiver, name = ast.unparse(call.args[0]), call.args[1]
    module = next((m for m, r in RECEIVERS.items() if receiver in r), None)
    if module is None:
        return None
    if isinstance(name, ast.Constant) and isinstance(name.value, str):
        pattern = re.escape(name.value)
    elif isinstance(name, ast.JoinedStr):
        pattern = "".join(
            re.escape(v.value) if isinstance(v, ast.Constant) else r"\w+" for v in name.values
        )
    else:
        return None
    return module, tuple(n for n in stubs[module] if re.fullmatch(pattern, n))


def call_sites() -> list[CallSite]:
    stubs = {m: stub_signatures(m) for m in RECEIVERS}
    sites = []
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                fn = node.func
                if isinstance(fn, ast.Attribute):
                    receiver = ast.unparse(fn.value)
                    for module, names in RECEIVERS.items():
                        if receiver in names and not fn.attr.startswith("_"):
                            sites.append(CallSite(where, module, (fn.attr,), node))
                elif isinstance(fn, ast.Call) and (found := _getattr_names(fn, stubs)):
                    sites.append(CallSite(where, found[0], found[1], node))
    return sites


def bind_problem(call: ast.Call, params: list[Param]) -> str | None:
    """Why the call cannot bind to params, or None. Calls that unpack (*a, **k) only need the
    function to exist."""
    unpacks = any(isinstance(a, ast.Starred) for a in call.args)
    if unpacks or any(k.arg is None for k in call.keywords):
        return None
    positional = [p for p in params if not p.keyword_only]
    if len(call.args) > len(positional):
        return f"{len(call.args)} positional arguments, the function takes {len(positional)}"
    given = {p.name for p in positional[: len(call.args)]}
    by_name = {p.name for p in params}
    for k in call.keywords:
        if k.arg not in by_name:
            return f"unknown keyword {k.arg!r}"
        if k.arg in given:
            return f"{k.arg!r} given twice"
        given.add(k.arg)
    missing = [p.name for p in params if not p.has_default and p.name not in given]
    return f"missing {missing}" if missing else None


def test_the_scan_finds_the_cuda_callers():
    """Guards the scan itself: the CUDA entry points named here are called from the package."""
    called = {n for s in call_sites() if s.module == "cuda" for n in s.names}
    assert {"kcenter_steps", "iht_threshold", "gram_min_eig", "min_dist_to_set"} <= called


def test_every_call_binds_to_its_signature():
    stubs = {m: stub_signatures(m) for m in RECEIVERS}
    problems = []
    for site in call_sites():
        if not site.names:
            problems.append(f"{site.where}: getattr names no {site.module} function")
        for name in site.names:
            if name not in stubs[site.module]:
                problems.append(f"{site.where}: {site.module}.{name} does not exist")
            elif (why := bind_problem(site.call, stubs[site.module][name])) is not None:
                problems.append(f"{site.where}: {site.module}.{name}: {why}")
    assert not problems, "\n".join(problems)


def test_bind_problem_reports_each_kind_of_mismatch():
    params = [Param("a", False), Param("b", True), Param("c", True, keyword_only=True)]

    def call(src):
        return ast.parse(src, mode="eval").body

    assert bind_problem(call("f(1)"), params) is None
    assert bind_problem(call("f(1, 2, c=3)"), params) is None
    assert bind_problem(call("f(*x)"), params) is None
    assert "positional" in bind_problem(call("f(1, 2, 3)"), params)
    assert "unknown keyword 'd'" in bind_problem(call("f(1, d=2)"), params)
    assert "given twice" in bind_problem(call("f(1, a=2)"), params)
    assert "missing ['a']" in bind_problem(call("f(b=1)"), params)
