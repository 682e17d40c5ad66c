"""CRC, convergence-rate control (Kong et al.): groups that best condition the NTK Gram matrix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _interop
from .._validate import check_bool, check_budget, check_choice, make_rng
from ..gram import check_rtol
from ..ntk import NtkRows
from .base import Selection, Strategy, register, unlabeled_rows

# On the CPU, CRC reads √C [h, 1] (and 16-bit NTK features widened) row by row as the Gram
# needs them, never as an (n, D) copy; False materialises it as CUDA does (tests compare the two).
_NTK_ON_DEMAND = True


@register
class CRC(Strategy):
    """Convergence Rate Control (Kong et al., Alg. 1): pick the groups of unlabeled points whose
    addition to the labeled set gives the largest smallest positive eigenvalue ``λ⁺_min`` of the
    (trace-over-classes) empirical NTK Gram matrix, eq. 9.

    The unlabeled pool is split at random (seeded, without replacement) into groups of ``G``; each
    group is scored by ``λ⁺_min(K(L ∪ group))`` with :func:`fastal.gram_min_eig`, and the ``Q / G``
    best groups are returned (ties to the earlier group). ``Q`` (the budget) must be a multiple of
    ``G``.

    Duplicates (``zeros``): ``λ⁺_min`` skips the eigenvalues that count as zero, as the paper
    defines it, so that the ``|S| - D`` zeros of a set larger than the feature width do not zero
    every score. Skipping *every* zero would contradict Proposition 2 (a degenerate set, one with
    duplicate instances, has a singular Gram matrix and scores 0, so "CRC never queries identical
    samples or those already in the labeled set"): a group repeating a labeled point, or two
    identical points, would be scored on one point fewer, usually higher, and CRC would prefer
    duplicates. With ``zeros="duplicates"`` (default) a group scores 0 when one of its rows has the
    features of a labeled row or of another row of the group (identical kernel rows: the
    proposition's degenerate multiset), or of a row of a better group already taken: the
    proposition covers one group (G = Q), and Alg. 1 takes the ``Q / G`` best groups each on its
    own, which could query copies of one point in two groups (an addition of fastal's). Only the
    candidates for the ``Q / G`` best places are checked, in score order; such a group ranks after
    every other, those whose ``λ⁺_min`` is 0 (no positive eigenvalue) included, and is taken only
    when too few others are left. ``zeros="skip"`` is plain ``λ⁺_min``. (An earlier default
    counted a group's zero eigenvalues against the rank of the whole pool's features; on ReLU
    features a unit that is silent on the labeled rows and the group but active elsewhere in the
    pool adds a zero, so once ``|S|`` passed that rank every group scored 0 and CRC took the first
    random groups.)

    Interpretations, documented: Alg. 1 forms ``⌈|U| / G⌉`` random groups; fastal forms
    ``⌊|U| / G⌋`` full groups (a short last group would be scored on fewer points) and, with
    ``max_groups``, scores only that many of them. With ``balanced=True`` every group holds
    ``G / C`` points of each
    pseudo-class (``argmax`` of the pool's probabilities or logits, a tie to the first column);
    ``G`` must then be a multiple of C and the number of groups is limited by the smallest
    pseudo-class.
    The paper's pseudo-AL setting (§4.3.1) balances groups by the *true* classes: pass one-hot
    labels as ``"probs"`` to reproduce it. The draw: one ``seed`` stream shuffles the unlabeled rows
    of class 0, then of class 1, ...; group ``i`` takes the ``i``-th ``G / C`` rows of each class,
    in class order; the rows left over in any class are not scored.

    Parameters
    ----------
    group_size : int, default 20
        G (the budget must be a multiple of it). The paper uses G = Q (Tables 3–4), G = 20
        (SVHN) and G = Q / 10 (CIFAR; App. B.1, Tables 2, 5–6); Table 1 varies G from 2 to 100.
    max_groups : int, optional
        Score at most this many random groups (all full groups by default).
    balanced : bool, default False
        Class-balanced groups from pseudo-labels (needs ``"probs"`` or ``"logits"`` in the pool).
    rtol : float, optional
        Relative zero threshold of the eigenvalues (see :func:`fastal.gram_min_eig`).
    zeros : {"duplicates", "skip"}, default "duplicates"
        Whether groups holding a duplicate score 0 (see above).
    bias : bool, default True
        Whether the model's last layer has a bias, for a pool of ``"features"`` with
        ``"probs"``/``"logits"``: the trace-NTK features are ``√C [h, 1]`` with it, ``√C h``
        without (:func:`fastal.ntk_features`).
    progress : bool, default False
        A tqdm bar over the groups as they are scored (CPU; a CUDA pool is scored in one call).

    The pool is an ``(n, D)`` array of trace-NTK features (see :func:`fastal.ntk_features`), or a
    mapping with ``"ntk_features"``, or with ``"features"`` and ``"probs"``/``"logits"`` (then the
    last-layer features ``√C [h, 1]`` are used, ``√C h`` with ``bias=False``; both must have one
    row per pool point, and the probabilities or logits are checked like every such input even
    when only their number of columns, C, is used). float16 / bfloat16 features are widened to
    float32 on purpose (the eigenvalues are float64 anyway).

    Memory: on the CPU the rows of ``√C [h, 1]`` (and widened 16-bit NTK features) are made as
    each Gram call reads them (:class:`fastal.ntk.NtkRows`, bit for bit those of
    :func:`fastal.ntk_features`): the labeled rows and about 16M values of group rows at a
    time (more only when forming a large labeled part again in each call would cost more than
    an eighth of it), never an ``(n, D)`` copy of the pool; CUDA pools are materialised with
    :func:`fastal.ntk_features`.

    Examples
    --------
    >>> import numpy as np
    >>> from fastal.strategies import CRC
    >>> Z = np.random.default_rng(0).normal(size=(60, 5))
    >>> sel = CRC(group_size=2).select(Z, 4, labeled=[0, 1, 2], seed=0)
    >>> len(set(sel.indices.tolist())), sel.diagnostics["n_groups"]
    (4, 28)
    """

    name = "crc"
    requires = ("features", "probs")

    def __init__(
        self,
        *,
        group_size: int = 20,
        max_groups: int | None = None,
        balanced: bool = False,
        rtol: float | None = None,
        zeros: str = "duplicates",
        bias: bool = True,
        progress: bool = False,
    ) -> None:
        for name, v in (("group_size", group_size), ("max_groups", max_groups)):
            if v is None and name == "max_groups":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.group_size = int(group_size)
        self.max_groups = None if max_groups is None else int(max_groups)
        self.balanced = check_bool(balanced, "balanced")
        self.rtol = check_rtol(rtol)  # here, not at the first select (after a round of training)
        zeros = check_choice(zeros, "zeros", ("duplicates", "skip"))
        self.zeros = zeros
        self.bias = check_bool(bias, "bias")
        self.progress = check_bool(progress, "progress")

    def validate_budget(self, budget: int) -> None:
        """Refuse a budget that is not a multiple of ``group_size`` (Alg. 1 takes Q/G groups).

        Parameters
        ----------
        budget : int
            Q, the budget a later ``select`` will get; a non-integer is left to ``select``.

        Raises
        ------
        ValueError
            If ``budget % group_size != 0``.
        """
        G = self.group_size
        if isinstance(budget, (int, np.integer)) and budget % G:
            raise ValueError(
                f"budget (Q = {budget}) must be a multiple of group_size (G = {G}): Alg. 1 takes "
                "Q/G groups"
            )

    def select(self, pool: Any, budget: int, labeled: Any = None, *, seed: Any = None) -> Selection:
        from ..gram import gram_min_eig, min_eig_of_rows

        Z, info, pseudo, n_classes = _ntk_pool(pool, need_labels=self.balanced, bias=self.bias)
        n = info.shape[0]
        lab, rest = unlabeled_rows(n, labeled, like=info)
        Q = check_budget(budget, rest.size)
        G = self.group_size
        self.validate_budget(Q)
        if Q == 0:  # the same keys as any other budget's, empty
            return Selection(
                _interop.to_framework(np.empty(0, np.int64), info),
                {
                    "n_groups": 0,
                    "scores": np.empty(0),
                    "chosen_groups": np.empty(0, np.int64),
                    "groups": np.empty((0, G), np.int64),
                    "degenerate_groups": np.empty(0, np.int64),
                },
            )
        rng = make_rng(seed)
        groups = (
            _balanced_groups(rest, pseudo, n_classes, G, rng)
            if self.balanced
            else _random_groups(rest, G, rng)
        )
        if self.max_groups is not None and groups.shape[0] > self.max_groups:
            groups = groups[: self.max_groups]  # the order is already random
        if groups.shape[0] < Q // G:
            raise ValueError(_too_few_groups(groups.shape[0], Q, G, rest, self, pseudo, n_classes))
        try:
            if isinstance(Z, NtkRows):  # host rows made group by group, bit for bit
                scores = min_eig_of_rows(Z, lab, groups, rtol=self.rtol, progress=self.progress)
            else:  # indices travel with Z (gram_min_eig wants them on Z's device)
                lab_z, groups_z = (_interop.to_framework(a, info) for a in (lab, groups))
                scores = gram_min_eig(Z, lab_z, groups_z, rtol=self.rtol, progress=self.progress)
        except ValueError as err:
            if "do not fit float64" not in str(err):
                raise
            raise ValueError(f"{_z_name(pool)}: {err}") from None
        scores = _interop.host_numpy(scores).astype(np.float64)
        degenerate = np.empty(0, np.int64)
        if self.zeros == "duplicates":
            degenerate = _zero_duplicates(_row_reader(Z, info), lab, groups, scores, Q // G)
        # highest, ties to the earlier group; a degenerate group after every other (its 0 ties
        # with a group whose λ⁺_min is 0, e.g. of an all-zero row: Proposition 2 never takes it)
        last = np.zeros(scores.size, dtype=bool)
        last[degenerate] = True
        best = np.lexsort((np.arange(scores.size), -scores, last))[: Q // G]
        indices = groups[best].reshape(-1)
        return Selection(
            _interop.to_framework(indices, info),
            {
                "n_groups": int(groups.shape[0]),
                "scores": scores,
                "chosen_groups": best,
                "groups": groups,
                "degenerate_groups": degenerate,
            },
        )


def _row_reader(Z: Any, info: Any) -> Any:
    """``take(rows)``: those rows of ``Z`` (an array or an :class:`NtkRows`) as host numpy."""
    if isinstance(Z, NtkRows):
        return Z.take
    import torch

    from .._torch_arrays import as_torch

    z = as_torch(Z, info)

    def take(rows: np.ndarray) -> np.ndarray:
        idx = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64)).to(z.device)
        return z[idx].cpu().numpy()

    return take


def _zero_duplicates(
    take: Any, lab: np.ndarray, groups: np.ndarray, scores: np.ndarray, want: int
) -> np.ndarray:
    """Set to 0 (in place) the score of every group, among the candidates for the ``want`` best
    places, that holds a duplicate (Proposition 2): a row whose features equal those of a labeled
    row, of another row of the group or of a row of a group kept before it. Candidates are taken
    in score order, in batches, until ``want`` of them hold none; returns the indices of the
    groups set to 0. ``take(rows)`` reads rows of Z (see :func:`_row_reader`)."""

    def host_rows(
        rows: np.ndarray,
    ) -> np.ndarray:  # float64, -0.0 as 0.0: equal values, equal bytes
        return take(rows).astype(np.float64) + 0.0

    taken = {row.tobytes() for row in host_rows(lab)}  # labeled rows, then the kept groups'
    order = np.lexsort((np.arange(scores.size), -scores))
    G = groups.shape[1]
    degenerate: list[int] = []
    kept, start, batch = 0, 0, max(want, 16)
    while kept < want and start < order.size:
        cand = order[start : start + batch]
        start += cand.size
        rows = host_rows(groups[cand].reshape(-1)).reshape(cand.size, G, -1)
        for g, block in zip(cand, rows, strict=True):
            keys = [row.tobytes() for row in block]
            if len(set(keys)) < G or any(k in taken for k in keys):
                scores[g] = 0.0
                degenerate.append(int(g))
                continue
            taken.update(keys)
            kept += 1
            if kept == want:
                break
    return np.array(sorted(degenerate), dtype=np.int64)


def _too_few_groups(k: int, Q: int, G: int, rest, strategy, pseudo, n_classes: int) -> str:
    """The error for a budget that needs more groups than there are, naming what limits them."""
    if strategy.max_groups is not None and strategy.max_groups < Q // G:
        return (
            f"max_groups = {strategy.max_groups} caps the groups below the {Q // G} "
            f"that budget {Q} needs"
        )
    msg = (
        f"only {k} full groups of {G} can be formed from {rest.size} unlabeled points; "
        f"budget {Q} needs {Q // G}"
    )
    if strategy.balanced:
        counts = np.bincount(pseudo[rest], minlength=n_classes)
        c = int(counts.argmin())
        msg += (
            f" (balanced=True: each group takes {G // n_classes} of every pseudo-class's rows, and "
            f"pseudo-class {c} has {int(counts[c])} unlabeled rows)"
        )
    return msg


def _ntk_pool(pool: Any, need_labels: bool, bias: bool = True) -> tuple[Any, Any, Any, int]:
    """(trace-NTK features Z, an ArrayInfo, pseudo-labels or None, number of classes or 0).

    Z is float32 or float64: float16 / bfloat16 ones (given, or computed from float16 / bfloat16
    ``"features"``) are read as float32 on purpose, since the Gram eigenvalues are computed in
    float64 anyway. On the CPU, where Z would be computed or widened, it is an :class:`NtkRows`
    making its rows on demand, and the ArrayInfo is that of the pool entry as passed (its
    framework and row count are what the caller reads); else Z is an array and the ArrayInfo its
    own. Every message names the pool entry the user passed.
    """
    import torch

    from .._torch_arrays import as_torch, from_torch, torch_isfinite_rows
    from .._validate import check_matrix, prob_sum_tol
    from ..ntk import ntk_features, ntk_rows

    probs, key = None, None
    if isinstance(pool, Mapping):
        if "probs" in pool or "logits" in pool:
            key = "probs" if "probs" in pool else "logits"
            probs = pool[key]
        if "ntk_features" in pool:
            Z, zname = pool["ntk_features"], "ntk_features"
        elif "features" in pool and probs is not None:
            Z, zname = pool["features"], "features"
        else:
            raise ValueError("pool needs 'ntk_features', or 'features' with 'probs' or 'logits'")
    else:
        Z, zname = pool, "pool"
    info = check_matrix(Z, zname)
    pinfo = None
    if probs is not None:
        pinfo = check_matrix(probs, key)
        if pinfo.shape[0] != info.shape[0]:
            raise ValueError(
                f"{key} and {zname} must have one row per pool point each, got {pinfo.shape[0]} "
                f"rows in {key} and {info.shape[0]} in {zname}"
            )
    low = info.dtype in ("float16", "bfloat16")  # read as float32 on purpose: the Gram is float64
    on_demand = _NTK_ON_DEMAND and info.device == "cpu" and (low or zname == "features")
    if zname != "features":
        bad = ~torch_isfinite_rows(as_torch(Z, info))
        if bool(bad.any()):
            raise ValueError(
                f"{zname} contains NaN or Inf in {int(bad.sum())} row(s), "
                f"first at row {int(bad.nonzero()[0, 0])}"
            )
    if on_demand:  # no (n, D) copy: the Gram reads the rows of √C [h, 1] it needs as it goes
        h, wide = as_torch(Z, info), torch.float32 if low else None
        if zname == "features":  # ntk_features' checks and messages
            Z = ntk_rows(h, pinfo.shape[1], bias=bias, dtype=wide)
        else:
            Z = NtkRows(h, None, False, wide)
    else:
        if low:
            Z = from_torch(as_torch(Z, info).float(), info)
            info = _interop.describe(Z, zname)
        if zname == "features":
            Z = ntk_features(Z, pinfo.shape[1], bias=bias)  # checks finiteness, names features
            info = _interop.describe(Z, zname)
    pseudo, n_classes = None, 0
    if need_labels and probs is None:
        raise ValueError("balanced=True needs 'probs' or 'logits' in the pool for pseudo-labels")
    if probs is not None:  # checked even when only C is read from them: they came for a reason
        n_classes = pinfo.shape[1]
        pt = as_torch(probs, pinfo)
        bad = ~torch_isfinite_rows(pt)
        if bool(bad.any()):  # argmax would put a NaN row in the NaN's column
            raise ValueError(
                f"{key} contains NaN or Inf in {int(bad.sum())} row(s), "
                f"first at row {int(bad.nonzero()[0, 0])}"
            )
        if key == "probs":  # [0, 1] and rows summing to 1, as every probs input
            tol, rows = prob_sum_tol(pinfo.dtype), max(1, (1 << 20) // max(1, n_classes))
            # in row tiles: a float64 copy of a 1M x 1000 probs was 8 GB for a check
            if any(_not_probabilities(pt[s : s + rows], tol) for s in range(0, pt.shape[0], rows)):
                raise ValueError(
                    f"probs must hold probabilities in [0, 1] with rows summing to 1 (within "
                    f"{tol:.3g} for {pinfo.dtype}); put logits under 'logits' in the pool"
                )
        if need_labels:
            pseudo = _interop.host_numpy(pt.argmax(1)).astype(np.int64)
    return Z, info, pseudo, n_classes


def _not_probabilities(p: Any, tol: float) -> bool:
    """Whether some row of ``p`` leaves [0, 1] or does not sum to 1 within ``tol`` (in float64)."""
    import torch

    p64 = p.to(torch.float64)
    return bool(((p64 < 0) | (p64 > 1)).any()) or bool(((p64.sum(1) - 1).abs() > tol).any())


def _z_name(pool: Any) -> str:
    """The pool entry the Gram's Z came from, for messages."""
    if not isinstance(pool, Mapping):
        return "pool"
    return "pool['ntk_features']" if "ntk_features" in pool else "pool['features'] (times √C)"


def _random_groups(rest: np.ndarray, G: int, rng: np.random.Generator) -> np.ndarray:
    """A random partition of ``rest`` into ⌊|rest| / G⌋ groups of G (the remainder is left out)."""
    perm = rng.permutation(rest)
    k = perm.size // G
    return perm[: k * G].reshape(k, G)


def _balanced_groups(
    rest: np.ndarray, pseudo: np.ndarray, C: int, G: int, rng: np.random.Generator
) -> np.ndarray:
    """Groups with G / C members of every pseudo-class (C = columns of the probabilities)."""
    if G % C:
        raise ValueError(
            f"balanced groups need group_size (G = {G}) to be a multiple of the classes ({C})"
        )
    per = G // C
    by_class = [rng.permutation(rest[pseudo[rest] == c]) for c in range(C)]
    k = min(c.size // per for c in by_class)
    if k == 0:
        return np.empty((0, G), dtype=np.int64)
    parts = [c[: k * per].reshape(k, per) for c in by_class]
    return np.concatenate(parts, axis=1)
