"""The import-time check that the CPU module's instructions exist on this CPU (fastal/_isa.py):
a -march=native module built on another machine would crash the interpreter at its first kernel."""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from fastal import _isa

AVX2_ONLY = (
    "processor\t: 0\nflags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c\n"
)


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return str(path)

    return write


def test_flags_come_from_the_first_flags_line(cpuinfo):
    path = cpuinfo(AVX2_ONLY + "processor\t: 1\nflags\t\t: avx512f\n")
    expected = "fpu sse sse2 pni ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c"
    assert _isa.cpu_flags(path) == set(expected.split(" "))


def test_no_flags_line_or_no_file_tells_nothing(cpuinfo, tmp_path):
    assert _isa.cpu_flags(cpuinfo("Features\t: fp asimd sve\n")) is None  # aarch64
    assert _isa.cpu_flags(str(tmp_path / "absent")) is None
    _isa.check_native_isa(["__AVX512F__"], cpuinfo("Features\t: fp asimd\n"))


def test_an_avx512_module_is_refused_on_an_avx2_cpu(cpuinfo, monkeypatch):
    monkeypatch.delenv(_isa.SKIP_ENV, raising=False)
    macros = ["__AVX2__", "__AVX512F__", "__AVX512BW__", "__AVX512BF16__", "__SHA__"]
    with pytest.raises(ImportError, match=r"\(avx512_bf16, avx512bw, avx512f\).*FASTAL_NATIVE=OFF"):
        _isa.check_native_isa(macros, cpuinfo(AVX2_ONLY))
    monkeypatch.setenv(_isa.SKIP_ENV, "1")
    _isa.check_native_isa(macros, cpuinfo(AVX2_ONLY))


def test_instructions_the_cpu_has_or_no_compiler_emits_pass(cpuinfo, monkeypatch):
    monkeypatch.delenv(_isa.SKIP_ENV, raising=False)
    path = cpuinfo(AVX2_ONLY)
    _isa.check_native_isa(["__AVX2__", "__FMA__", "__SSE3__", "__SHA__", "__RDRND__"], path)
    _isa.check_native_isa([], path)
    assert _isa.missing_cpu_flags(["__LZCNT__", "__BMI__", "__AVX2__"], {"avx2"}) == [
        "abm",
        "bmi1",
    ]


def test_this_build_passes_its_own_check():
    # every flag name in the table that this CPU has must be spelled as Linux spells it, or the
    # module would be refused on the machine that built it
    from fastal import _cpu

    record = pathlib.Path(_cpu.__file__).with_name("_native_isa.py")
    assert record.exists(), "the build installed its CPU module without _native_isa.py"
    native = importlib.import_module("fastal._native_isa")
    flags = _isa.cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags here")
    assert _isa.missing_cpu_flags(native.MACROS, flags) == []
    if native.NATIVE and "avx2" in flags:  # the build's probe of -march=native found something
        assert "__AVX2__" in native.MACROS
    _isa.check_native_isa()


def test_import_fastal_runs_the_check_before_the_module_loads():
    # in a fresh interpreter: the check module and the build's record stand in for a CPU with
    # none of the module's instructions
    code = f"""
import importlib.util, sys, types
spec = importlib.util.spec_from_file_location("fastal._isa", {_isa.__file__!r})
isa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(isa)
isa.cpu_flags = lambda path="/proc/cpuinfo": {{"sse2"}}
sys.modules["fastal._isa"] = isa
sys.modules["fastal._native_isa"] = types.SimpleNamespace(NATIVE=True, MACROS=("__AVX2__",))
try:
    import fastal
except ImportError as e:
    assert "fastal._cpu" not in sys.modules, "the module loaded before the check"
    print(e)
"""
    env = {k: v for k, v in os.environ.items() if k != _isa.SKIP_ENV}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "this CPU lacks (avx2)" in out.stdout
