"""Refuse a CPU module compiled for instructions this CPU lacks.

``-march=native`` (the default, ``FASTAL_NATIVE=ON``) compiles the kernels for the build machine.
Where that module reaches a machine without those instructions (a venv on a cluster's shared
file system, built on a newer login node), its first kernel would kill the interpreter with an
illegal instruction; the import raises an ImportError that says what to do instead. The build
writes what it compiled for to ``_native_isa.py`` (CMakeLists.txt); Linux lists what the CPU has in
/proc/cpuinfo. Elsewhere, or without either file, nothing is checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# Compiler macro -> the flag Linux lists in /proc/cpuinfo, for the instructions compilers emit on
# their own (vectorised loops, bit tricks). Instructions only intrinsics reach (AES, SHA, RDRAND,
# ...) are left out: fastal uses none, and a kernel may hide one the CPU reports.
CPUINFO_FLAG = {
    "__SSE3__": "pni",
    "__SSSE3__": "ssse3",
    "__SSE4_1__": "sse4_1",
    "__SSE4_2__": "sse4_2",
    "__POPCNT__": "popcnt",
    "__LZCNT__": "abm",
    "__BMI__": "bmi1",
    "__BMI2__": "bmi2",
    "__MOVBE__": "movbe",
    "__F16C__": "f16c",
    "__FMA__": "fma",
    "__AVX__": "avx",
    "__AVX2__": "avx2",
    "__AVXVNNI__": "avx_vnni",
    "__GFNI__": "gfni",
    "__AVX512F__": "avx512f",
    "__AVX512CD__": "avx512cd",
    "__AVX512BW__": "avx512bw",
    "__AVX512DQ__": "avx512dq",
    "__AVX512VL__": "avx512vl",
    "__AVX512IFMA__": "avx512ifma",
    "__AVX512VBMI__": "avx512vbmi",
    "__AVX512VBMI2__": "avx512_vbmi2",
    "__AVX512VNNI__": "avx512_vnni",
    "__AVX512BITALG__": "avx512_bitalg",
    "__AVX512VPOPCNTDQ__": "avx512_vpopcntdq",
    "__AVX512BF16__": "avx512_bf16",
    "__AVX512FP16__": "avx512_fp16",
}

SKIP_ENV = "FASTAL_SKIP_ISA_CHECK"


def cpu_flags(cpuinfo_path: str = "/proc/cpuinfo") -> set[str] | None:
    """The first CPU's flags in /proc/cpuinfo (x86 Linux), or None where it cannot tell."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return None


def missing_cpu_flags(macros: Iterable[str], flags: set[str]) -> list[str]:
    """The cpuinfo flags of ``macros`` (compiler macros) that ``flags`` lacks, sorted."""
    return sorted({CPUINFO_FLAG[m] for m in macros if m in CPUINFO_FLAG} - flags)


def check_native_isa(
    macros: Iterable[str] | None = None, cpuinfo_path: str = "/proc/cpuinfo"
) -> None:
    """Raise ImportError if the CPU module needs instructions this CPU lacks.

    ``macros`` defaults to the build's (``_native_isa.MACROS``); ``FASTAL_SKIP_ISA_CHECK=1`` in
    the environment skips the check.
    """
    if os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return
    if macros is None:
        try:
            from ._native_isa import MACROS as macros
        except ImportError:  # a source tree without a build: nothing to compare
            return
    flags = cpu_flags(cpuinfo_path)
    if flags is None:
        return
    missing = missing_cpu_flags(macros, flags)
    if missing:
        raise ImportError(
            "fastal's CPU module was compiled for instructions this CPU lacks "
            f"({', '.join(missing)}): it was built with -march=native on another machine, and "
            "its kernels would crash the interpreter here. Rebuild fastal on this machine "
            "(pip install --force-reinstall --no-cache-dir from its source), or build one module "
            f"for every machine with FASTAL_NATIVE=OFF. {SKIP_ENV}=1 skips this check."
        )
