"""``gram_min_eig(..., method="lowrank")`` for CUDA arrays: the shared-eigendecomposition method in
batched torch linear algebra, on the array's device.

The method is the CPU kernel's (csrc/cpu/gram_lowrank.cpp): the labeled part is diagonalised once
(float64 ``torch.linalg.eigh``: ``Z_Lᵀ Z_L = Q Λ Qᵀ`` on the D side, ``Z_L Z_Lᵀ`` on the |S| side)
and a group's matrix is a small change of the diagonal ``Λ``. For a shift ``x`` the number of its
eigenvalues below ``x`` follows from the inertia of a G x G matrix (Haynsworth), with
``r_i = 1 / (Λ_i - x)`` and ``V`` the group's rows in the eigenbasis (m x G):

- D side: ``#(λ < x) = #(Λ < x) - #neg(I + Vᵀ diag(r) V)``;
- |S| side: ``#(λ < x) = #(Λ < x) + #neg(C - xI - Vᵀ diag(r) V)``, ``C = Z_g Z_gᵀ``.

The CPU kernel converges Laguerre's iteration, one group per thread. Here every group moves at once:
each round evaluates ``SHIFTS`` equispaced shifts inside every group's bracket (one batched matrix
product for the G x G matrices, one batched ``eigvalsh`` for their inertia) and keeps the
sub-interval where the count crosses the wanted index, as the CPU's multisection fallback does, to
the same tolerances: ``λ_max`` to 1e-6 of the spectrum's scale (it only sets the zero threshold
``rtol · λ_max``), ``λ⁺_min`` to ``eps · λ_max / 2``. Groups are processed in chunks that bound the
temporary ``(chunk, SHIFTS, G, m)`` product to ``CHUNK_BYTES``. Everything is float64.

It runs on any torch device, so the CPU tests check it on CPU tensors against the C++ kernel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = float(np.finfo(np.float64).eps)
TINY = float(np.finfo(np.float64).tiny)
SHIFTS = 15  # shifts per round: log2(16) = 4 bits of the bracket per round
MAX_ROUNDS = 64
CHUNK_BYTES = 1 << 28


def shared_eigenbasis(ZL: Any, s_side: bool) -> tuple[Any, Any]:
    """Λ (ascending) and the basis P (m x D) of the labeled rows ``ZL`` (float64 tensor): D side
    ``Z_Lᵀ Z_L = Q Λ Qᵀ``, ``P = Qᵀ``; |S| side ``Z_L Z_Lᵀ = Q Λ Qᵀ``, ``P = Qᵀ Z_L``, so that a
    group's ``Vᵀ = Z_g Pᵀ``."""
    import torch

    if s_side:
        lam, Q = torch.linalg.eigh(ZL @ ZL.T)
        return lam, Q.T @ ZL
    lam, Q = torch.linalg.eigh(ZL.T @ ZL)
    return lam, Q.T


class _Chunk:
    """The groups of one chunk: their V, C, bounds and the count of eigenvalues below shifts."""

    def __init__(self, Zg: Any, lam: Any, P: Any, s_side: bool) -> None:
        import torch

        self.s_side = s_side
        self.lam = lam  # (m,)
        self.Vt = Zg @ P.T  # (c, G, m)
        self.C = Zg @ Zg.transpose(1, 2)  # (c, G, G)
        m, G = lam.shape[0], Zg.shape[1]
        self.n = m + G if s_side else m  # the order of the matrix whose spectrum is searched
        lam_max = (
            lam[-1].clamp_min(0.0) if m else torch.zeros((), dtype=lam.dtype, device=lam.device)
        )
        diag = torch.diagonal(self.C, dim1=1, dim2=2)
        # λ_max lies in [max(Λ_max, max_a C_aa), Λ_max + λ_max(C)], and λ_max(C) is at most its
        # trace and its largest absolute row sum (as the CPU kernel)
        hi = lam_max + torch.minimum(diag.sum(1), self.C.abs().sum(2).amax(1))
        # else every row of the group is zero, or the matrix subnormal: no positive eigenvalue
        # (the CPU kernel's rule)
        self.live = hi >= TINY
        pad = 8 * EPS * hi + 8 * TINY * self.n
        self.hi = hi + pad
        self.lmax_lo = torch.maximum(lam_max, diag.amax(1)) * (1 - 16 * EPS) - pad
        self.floor = EPS * EPS * self.hi  # |Λ_i - x| below this: Λ_i counts as below x

    def count(self, x: Any, rows: Any) -> Any:
        """Eigenvalues below x[j, s] of group rows[j] (x: (len(rows), S)) -> (len(rows), S)."""
        import torch

        Vt, floor = self.Vt[rows], self.floor[rows, None, None]
        diff = self.lam - x[..., None]  # (r, S, m)
        diff = torch.where(diff.abs() < floor, -floor.expand_as(diff), diff)
        below = (diff < 0).sum(-1)
        # Vᵀ diag(1 / diff) V for every shift: (r, S, G, m) @ (r, 1, m, G)
        prod = (Vt[:, None] / diff[:, :, None, :]) @ Vt.transpose(1, 2)[:, None]
        G = Vt.shape[1]
        eye = torch.eye(G, dtype=Vt.dtype, device=Vt.device)
        if self.s_side:
            M = self.C[rows, None] - x[..., None, None] * eye - prod
        else:
            M = eye + prod
        ev = torch.linalg.eigvalsh(M)
        # a pivot this small counts as negative, as in the CPU kernel's elimination
        pivmin = EPS * EPS * M.abs().amax((-2, -1)) + TINY
        neg = (ev < pivmin[..., None]).sum(-1)
        return below + neg if self.s_side else below - neg

    def kth(self, k: Any, lo: Any, hi: Any, abstol: Any) -> Any:
        """The k[j]-th smallest eigenvalue (0-based) of every group from count(lo) <= k < count(hi),
        by multisection until hi - lo <= abstol + 2 eps max(|lo|, |hi|)."""
        import torch

        lo, hi = lo.clone(), hi.clone()
        steps = torch.arange(1, SHIFTS + 1, dtype=lo.dtype, device=lo.device) / (SHIFTS + 1)
        for _ in range(MAX_ROUNDS):
            width = hi - lo
            active = torch.nonzero(width > abstol + 2 * EPS * torch.maximum(lo.abs(), hi.abs()))
            if active.numel() == 0:
                break
            rows = active[:, 0]
            x = lo[rows, None] + width[rows, None] * steps  # (r, S)
            above = self.count(x, rows) > k[rows, None]
            # the first shift whose count exceeds k: the bracket is (x[first - 1], x[first])
            first = torch.where(above.any(1), above.int().argmax(1), SHIFTS)
            xs = torch.cat([lo[rows, None], x, hi[rows, None]], 1)  # shift s at column s + 1
            lo[rows] = xs.gather(1, first[:, None])[:, 0]
            hi[rows] = xs.gather(1, first[:, None] + 1)[:, 0]
        return 0.5 * (lo + hi)

    def min_positive(self, rtol: float) -> Any:
        """λ⁺_min of every group: λ_max, the count of eigenvalues at or below rtol · λ_max, then
        the next eigenvalue. Groups without a positive eigenvalue get 0 and are never counted
        (a brackets of width zero is never narrowed)."""
        import torch

        hi, n = self.hi, self.n
        out = torch.zeros_like(hi)
        top = torch.full(hi.shape, n - 1, device=hi.device)
        lmax = self.kth(top, torch.where(self.live, self.lmax_lo, hi), hi, 1e-6 * hi)
        lmax = torch.where(self.live, lmax, out)
        rows = torch.nonzero(lmax > 0)[:, 0]
        if rows.numel() == 0:
            return out
        thr = rtol * lmax
        zeros = torch.full(hi.shape, n, device=hi.device)
        zeros[rows] = self.count(thr[rows, None], rows)[:, 0]
        go = zeros < n  # (lmax > 0 wherever zeros < n)
        val = self.kth(zeros, torch.where(go, thr, hi), hi, 0.5 * EPS * lmax)
        return torch.where(go, val, out)


def gram_min_eig_lowrank_torch(Z: Any, labeled: np.ndarray, groups: Any, rtol: float) -> Any:
    """λ⁺_min of every group (float64 tensor on Z's device) by the low-rank method.

    ``Z`` (n, D) float32 or float64 torch tensor, finite; ``labeled`` checked int64 host indices;
    ``groups`` checked (n_groups, G) int64 indices (numpy or a tensor on Z's device).
    """
    import torch

    dev = Z.device
    grp = torch.as_tensor(groups, dtype=torch.int64, device=dev)
    n_groups, G = grp.shape
    D = Z.shape[1]
    s_side = labeled.size + G <= D
    ZL = Z[torch.as_tensor(labeled, dtype=torch.int64, device=dev)].double()
    lam, P = shared_eigenbasis(ZL, s_side)
    m = lam.shape[0]
    per_group = 8 * SHIFTS * G * max(m, 1) * 2  # the product and its operand
    chunk = max(1, min(n_groups, CHUNK_BYTES // per_group))
    out = torch.empty(n_groups, dtype=torch.float64, device=dev)
    for start in range(0, n_groups, chunk):
        rows = grp[start : start + chunk]
        Zg = Z[rows].double()  # (c, G, D)
        out[start : start + chunk] = _Chunk(Zg, lam, P, s_side).min_positive(rtol)
    return out
