"""Exact dominance reductions of a covering matrix (rows: points, columns: centres).

A centre covering a subset of another's points is dropped; without outliers a point whose
centres include another point's is dropped, with outliers only equal points are merged (counted
with their multiplicity). Each keeps feasibility exactly and shrinks the MIP HiGHS solves, skipped
when the row overlaps would be too many to list (``_OVERLAP_LIMIT``).
:meth:`fastal._covering_mip._Problem.feasible` calls :func:`_reduce` on every MIP it builds.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _reduce(A: Any, *, outliers: bool) -> tuple[Any, np.ndarray, np.ndarray]:
    """Dominance reductions of the covering matrix ``A`` (rows: points, columns: centres).

    Returns the reduced matrix, the kept columns and each kept row's multiplicity. Both steps
    keep feasibility exactly (and a reduced solution covers every original row):

    - a column whose covered rows are a subset of another column's is dropped: a solution using
      it stays feasible with the other one instead (of equal columns the first is kept);
    - without outliers, a row whose centres are a superset of another row's is dropped: covering
      the other covers it (of equal rows the first is kept). With outliers, only equal rows are
      merged, the merged row counting its multiplicity against Ξ.

    Repeated until nothing changes: either step can enable the other. HiGHS's own presolve does
    not find these on covering matrices, and they shrink the hard MIPs several times over.
    """
    from scipy import sparse

    A = sparse.csr_array(A)
    keep = np.arange(A.shape[1])
    weight = np.ones(A.shape[0])
    while True:
        drop = _dominated(A, strict_too=not outliers)  # rows: those containing another
        if outliers and drop.any():
            # merge each dropped (equal) row into the first of its kind
            first = _first_equal(A)
            np.add.at(weight, first[drop], weight[drop])
        A, weight = A[~drop], weight[~drop]
        At = sparse.csr_array(A.T)
        dropc = _dominated(At, strict_too=True, subset_dropped=True)
        A, keep = sparse.csr_array(sparse.csc_array(A)[:, ~dropc]), keep[~dropc]
        if not drop.any() and not dropc.any():
            return A, keep, weight


#: row pairs _dominated may list (each about 20 bytes through the sparse product)
_OVERLAP_LIMIT = 2e7


def _overlaps(A: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, |S_i ∩ S_j|, |S_i|) for every pair of distinct rows of 0/1 ``A`` that overlap."""
    size = np.asarray(A.sum(axis=1)).ravel()
    ov = (A @ A.T).tocoo()
    off = ov.row != ov.col
    return ov.row[off], ov.col[off], ov.data[off], size


def _dominated(A: Any, *, strict_too: bool, subset_dropped: bool = False) -> np.ndarray:
    """Rows to drop: each has a row ``S_k ⊆ S_i`` (or the reverse with ``subset_dropped``).

    Equal rows: all but the lowest index are dropped. Strict inclusions only with ``strict_too``.
    None are dropped when the row overlaps would be too many to list (``A Aᵀ`` has up to
    Σ_columns count² entries: 10k points over 4 candidates took 4.7 GB): the reductions only
    shrink the MIP, which is exact without them.
    """
    counts = np.bincount(A.indices, minlength=A.shape[1]).astype(np.float64)  # per column
    if float(counts @ counts) > _OVERLAP_LIMIT:
        drop = np.zeros(A.shape[0], dtype=bool)
        if subset_dropped:
            drop |= np.diff(A.indptr) == 0
        return drop
    i, j, inter, size = _overlaps(A)
    sub = inter == size[i]  # S_i ⊆ S_j
    equal = sub & (size[i] == size[j])
    drop = np.zeros(A.shape[0], dtype=bool)
    drop[j[equal & (i < j)]] = True
    if strict_too:
        strict = sub & ~equal
        drop[(i if subset_dropped else j)[strict]] = True
    if subset_dropped:
        drop |= size == 0  # the empty set is a subset of anything
    return drop


def _first_equal(A: Any) -> np.ndarray:
    """For each row the lowest index of the rows equal to it (itself when unique)."""
    i, j, inter, size = _overlaps(A)
    equal = (inter == size[i]) & (size[i] == size[j])
    first = np.arange(A.shape[0])
    np.minimum.at(first, j[equal], i[equal])
    return first
