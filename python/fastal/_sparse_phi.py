"""Φ of the Sparse Approximation problem (eq. 15): kept factored (eq. 14, columns
``(1/b) a_j ⊗ h_j``, never materialised) or dense (the Bayesian form, eq. 19). Public through
:mod:`fastal.sparse`, whose docstring states the interpretations."""

from __future__ import annotations

from typing import Any, ClassVar

from . import _ext, _interop


class FactoredPhi:
    """Φ with columns ``φ_j = (1/b) a_j ⊗ h_j`` (never materialised); vectors over j are torch.

    ``apply(u)`` is ``Φu = (1/b) Aᵀ diag(u) H`` (a C × dh matrix, over the non-zeros of ``u`` only
    when they are few); ``adjoint(R)`` is ``(Φᵀ R)_j = (1/b) a_jᵀ R h_j`` for all j (or the given
    rows), computed in row tiles as ``rowsum(A ⊙ (H Rᵀ))``: no n × C·dh or n × dh intermediate.
    ``grad_apply`` fuses the gradient of ``f1`` with ``Φ`` applied to it in one pass over the tiles.

    ``H`` may be the pool's features as they are: ``h_j`` is row ``hrows[j]`` of ``H`` (row j when
    ``hrows`` is None), in A's dtype, followed by a 1 when ``bias`` (the bias gradient's column). On
    the CPU the C++ kernels read those rows in place (float32, float16 or bfloat16 H for a float32
    A; float64 for float64), so the unlabeled rows are never copied, widened or extended; otherwise
    they are gathered into one tensor here.

    Parameters
    ----------
    A : torch.Tensor (n, C)
        The vectors ``a_j``, float32 or float64 (SparseApprox: the expected gradients
        ``p - P``); kept contiguous (copied if it is not).
    H : torch.Tensor (n_H, d)
        The features, on ``A``'s device (else ``ValueError``); detached, never written.
    b : int
        The budget: every column carries the factor ``1/b``.
    hrows : torch.Tensor (n,) of int, optional
        ``h_j`` is row ``hrows[j]`` of ``H``; None: ``H`` has the ``n`` rows (else
        ``ValueError``).
    bias : bool, default False
        Append a 1 to every ``h_j``: ``dh = d + 1``, else ``dh = d``.

    Attributes
    ----------
    n : int
        The number of columns of Φ (candidates).
    dh : int
        The width of ``h_j``; Φu and ``R`` are ``(C, dh)``.
    scale : float
        ``1/b``.

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import FactoredPhi
    >>> A = torch.tensor([[1.0, -1.0], [0.5, 0.5], [0.0, 2.0]], dtype=torch.float64)
    >>> H = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=torch.float64)
    >>> phi = FactoredPhi(A, H, 2)
    >>> Phi = torch.stack([torch.kron(A[j], H[j]) for j in range(3)], 1) / 2  # dense (C·dh, n)
    >>> u = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
    >>> phi.apply(u).tolist()  # (C, dh)
    [[0.5, 1.0], [9.5, 11.0]]
    >>> torch.equal(phi.apply(u).flatten(), Phi @ u)
    True
    >>> R = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> phi.adjoint(R).tolist(), phi.adjoint(R, torch.tensor([2, 0])).tolist()
    ([-0.5, 1.75, 6.0], [6.0, -0.5])
    >>> FactoredPhi(A, H, 2, hrows=torch.tensor([2, 0, 1]), bias=True).dh
    3
    """

    _TILE = 1 << 14
    _use_kernels = True  # False: the torch tiles everywhere (tests compare the two paths)
    #: (A's dtype, H's dtype) -> the C++ kernels' tag
    _KERNEL_TAGS: ClassVar[dict[tuple[str, str], str]] = {
        ("float32", "float32"): "float32",
        ("float32", "float16"): "float16",
        ("float32", "bfloat16"): "bfloat16",
        ("float64", "float64"): "float64",
    }

    def __init__(self, A: Any, H: Any, b: int, *, hrows: Any = None, bias: bool = False) -> None:
        import torch

        self.A, self.scale = A.contiguous(), 1.0 / b
        self.n = A.shape[0]
        H = H.detach().resolve_neg()  # the kernels read memory, not a lazy negation
        rows_h = H.shape[0] if hrows is None else hrows.numel()
        if rows_h != self.n or A.device != H.device:
            raise ValueError(
                f"H must give {self.n} rows on {A.device} like A, got {rows_h} on {H.device}"
            )
        dtypes = (str(A.dtype).removeprefix("torch."), str(H.dtype).removeprefix("torch."))
        tag = self._KERNEL_TAGS.get(dtypes)
        # on the CPU the row-wise products run in the C++ kernels (one pass, no temporaries)
        self._kernel = None
        if A.device.type == "cpu" and tag is not None and self._use_kernels:
            ops = ("adjoint", "apply", "grad_apply")
            self._kernel = {op: getattr(_ext.cpu, f"factored_{op}_{tag}") for op in ops}
            self.H = H.contiguous()
            self._an = self.A.numpy()
            self._hn = _interop.host_storage(self.H, _interop.describe(self.H, "H"))
            self._rows = {
                "hrows": None if hrows is None else hrows.to(torch.int64).contiguous().numpy(),
                "bias": bool(bias),
            }
        else:
            if hrows is not None:
                H = H[hrows.to(H.device)]
            H = H.to(A.dtype)
            if bias:
                H = torch.cat([H, torch.ones((H.shape[0], 1), dtype=H.dtype, device=H.device)], 1)
            self.H = H.contiguous()
        self.dh = H.shape[1] + (1 if bias and self._kernel is not None else 0)

    def apply(self, u: Any) -> Any:
        """``Φu = (1/b) Σ_j u_j a_j h_jᵀ``; the CPU kernels skip the rows where ``u_j = 0``, the
        torch path does when fewer than a quarter of ``u`` is non-zero.

        Parameters
        ----------
        u : torch.Tensor (n,)
            float64 on ``A``'s device (the CPU kernels take nothing else).

        Returns
        -------
        torch.Tensor (C, dh)
            float64, on ``u``'s device.
        """
        import torch

        if self._kernel is not None:  # skips the zero entries of u itself
            M = self._kernel["apply"](
                self._an, self._hn, u.contiguous().numpy(), self.scale, **self._rows
            )
            return torch.from_numpy(M)
        nz = torch.nonzero(u).flatten()
        if nz.numel() * 4 < self.n:  # sparse: only the selected columns
            a, h, uu = self.A[nz], self.H[nz], u[nz]
            return self.scale * ((a.to(torch.float64) * uu[:, None]).T @ h.to(torch.float64))
        out = torch.zeros((self.A.shape[1], self.dh), dtype=torch.float64, device=u.device)
        for s in range(0, self.n, self._TILE):
            a, h = self.A[s : s + self._TILE], self.H[s : s + self._TILE]
            uu = u[s : s + self._TILE].to(h.dtype)
            out += ((a * uu[:, None]).T @ h).to(torch.float64)  # scale the narrow factor, not H
        return self.scale * out

    def adjoint(self, R: Any, rows: Any = None) -> Any:
        """``Φᵀ R``: ``(1/b) a_jᵀ R h_j`` for every candidate ``j``, or for those of ``rows``.

        Parameters
        ----------
        R : torch.Tensor (C, dh)
            float64 (a residual ``Φw - v``), on ``A``'s device.
        rows : torch.Tensor (k,) of int, optional
            Candidates to compute, in this order; None: all ``n``.

        Returns
        -------
        torch.Tensor (n,) or (k,)
            float64.
        """
        import torch

        if self._kernel is not None:
            rows_np = None if rows is None else rows.to(torch.int64).contiguous().numpy()
            out = self._kernel["adjoint"](
                self._an, self._hn, R.contiguous().numpy(), self.scale, rows_np, **self._rows
            )
            return torch.from_numpy(out)
        Rc = R.to(self.H.dtype)
        if rows is not None:
            a, h = self.A[rows], self.H[rows]
            return self.scale * (a * (h @ Rc.T)).sum(1).to(torch.float64)
        out = torch.empty(self.n, dtype=torch.float64, device=R.device)
        for s in range(0, self.n, self._TILE):
            a, h = self.A[s : s + self._TILE], self.H[s : s + self._TILE]
            out[s : s + self._TILE] = (a * (h @ Rc.T)).sum(1).to(torch.float64)
        return self.scale * out

    def grad_apply(self, R: Any, z: Any, beta: float, rows: Any = None) -> tuple[Any, Any]:
        """``g = 2 Φᵀ R + 2β (z - 1)`` and ``Φ g``, reading every tile of A and H once; with
        ``rows``, ``g`` on those rows only and ``Φ`` of ``g`` scattered there (De-bias's step).

        Parameters
        ----------
        R : torch.Tensor (C, dh)
            float64, the residual ``Φz - v``: ``g`` is then ``∇f1(z)``.
        z : torch.Tensor (n,)
            float64, the point of the ridge term.
        beta : float
            β.
        rows : torch.Tensor (k,) of int, optional
            Compute ``g`` on these candidates only; None: all ``n``.

        Returns
        -------
        g : torch.Tensor (n,) or (k,)
            float64.
        M : torch.Tensor (C, dh)
            float64, ``Φ g`` (with ``rows``: Φ of the n-vector holding ``g`` there, 0 elsewhere).
        """
        import torch

        if self._kernel is not None:
            rows_np = None if rows is None else rows.to(torch.int64).contiguous().numpy()
            g, M = self._kernel["grad_apply"](
                self._an, self._hn, R.contiguous().numpy(), self.scale, z.contiguous().numpy(),
                beta, rows_np, **self._rows,
            )  # fmt: skip
            return torch.from_numpy(g), torch.from_numpy(M)
        if rows is not None:
            a, h = self.A[rows], self.H[rows]
            Rc = R.to(h.dtype)
            adj = (a * (h @ Rc.T)).sum(1).to(torch.float64)
            g = 2 * self.scale * adj + 2 * beta * (z[rows] - 1)
            M = (a.to(torch.float64) * g[:, None]).T @ h.to(torch.float64)
            return g, self.scale * M
        g = torch.empty(self.n, dtype=torch.float64, device=R.device)
        out = torch.zeros((self.A.shape[1], self.dh), dtype=torch.float64, device=R.device)
        Rc = R.to(self.H.dtype)
        for s in range(0, self.n, self._TILE):
            a, h = self.A[s : s + self._TILE], self.H[s : s + self._TILE]
            gt = 2 * self.scale * (a * (h @ Rc.T)).sum(1).to(torch.float64) + 2 * beta * (
                z[s : s + self._TILE] - 1
            )
            g[s : s + self._TILE] = gt
            out += ((a * gt.to(a.dtype)[:, None]).T @ h).to(torch.float64)
        return g, self.scale * out


class DensePhi:
    """Φ as an explicit (m, n) matrix (the Bayesian form, eq. 19 as the module docstring says).

    ``Φ = G / b``; the same interface as :class:`FactoredPhi`, with vectors of length ``m`` in
    place of its ``(C, dh)`` matrices. SparseApprox passes ``G = E``, the expected centred losses
    (module docstring), in float64. Products are plain torch, in ``G``'s dtype and device.

    Parameters
    ----------
    G : torch.Tensor (m, n)
        One column per candidate.
    b : int
        The budget: ``Φ = G / b``.

    Attributes
    ----------
    G : torch.Tensor (m, n)
        ``G`` itself (not copied).
    n : int
        The number of candidates.
    scale : float
        ``1/b``.

    Examples
    --------
    >>> import torch
    >>> from fastal.sparse import DensePhi
    >>> G = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], dtype=torch.float64)
    >>> phi = DensePhi(G, 2)
    >>> phi.apply(torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)).tolist()
    [2.5, -1.0]
    >>> phi.adjoint(torch.tensor([1.0, 1.0], dtype=torch.float64)).tolist()
    [0.5, 0.5, 0.5]
    """

    def __init__(self, G: Any, b: int) -> None:
        self.G, self.scale, self.n = G, 1.0 / b, G.shape[1]

    def apply(self, u: Any) -> Any:
        """``Φu = G u / b``.

        Parameters
        ----------
        u : torch.Tensor (n,)
            Like ``G`` (dtype and device).

        Returns
        -------
        torch.Tensor (m,)
        """
        return self.scale * (self.G @ u)

    def adjoint(self, R: Any, rows: Any = None) -> Any:
        """``Φᵀ R = Gᵀ R / b``, on every candidate or on those of ``rows``.

        Parameters
        ----------
        R : torch.Tensor (m,)
            Like ``G`` (a residual ``Φw - v``).
        rows : torch.Tensor (k,) of int, optional
            Candidates to compute, in this order; None: all ``n``.

        Returns
        -------
        torch.Tensor (n,) or (k,)
        """
        G = self.G if rows is None else self.G[:, rows]
        return self.scale * (G.T @ R)

    def grad_apply(self, R: Any, z: Any, beta: float, rows: Any = None) -> tuple[Any, Any]:
        """``g = 2 Φᵀ R + 2β (z - 1)`` and ``Φ g``; with ``rows``, ``g`` on those candidates only
        and ``Φ`` of ``g`` scattered there (De-bias's step).

        As :meth:`FactoredPhi.grad_apply`, with the residual ``R`` and ``Φ g`` vectors of length
        ``m`` in place of ``(C, dh)`` matrices.
        """
        if rows is None:
            g = 2 * self.adjoint(R) + 2 * beta * (z - 1)
            return g, self.apply(g)
        g = 2 * self.adjoint(R, rows) + 2 * beta * (z[rows] - 1)
        return g, self.scale * (self.G[:, rows] @ g)
