"""Device-resident torch peers shared by the GPU benchmark cases."""

from __future__ import annotations

from typing import Any


def d2_sampling_torch(M: Any, sq: Any, first: Any, u: Any, steps: int) -> Any:
    """k-means++ D² sampling over the rows of ``M`` (n x D, on the device), as a careful torch user
    would write it: ``steps`` picks starting from ``first`` ((1,) int64 tensor), then draws at the
    uniforms ``u`` (fastal's stream). ``sq`` is ``|M_i|²``. Per pick one ``addmv`` distance pass,
    ``minimum`` into the running distances, a float64 ``cumsum`` and ``searchsorted``; the picks
    stay device tensors (no host round trip per pick)."""
    import torch

    n = M.shape[0]
    picks = torch.empty(steps, dtype=torch.int64, device=M.device)
    i = first
    picks[0:1] = i

    def sqdist(i):  # i: (1,) int64 on the device
        m = M.index_select(0, i).squeeze(0)
        return torch.addmv(sq + sq.index_select(0, i), M, m, alpha=-2).clamp_min_(0)

    if steps == 1:
        return picks
    mind = sqdist(i)
    mind.index_fill_(0, i, 0)
    for t in range(1, steps):
        cum = torch.cumsum(mind, 0, dtype=torch.float64)
        i = torch.searchsorted(cum, (u[t] * cum[-1]).view(1), right=True).clamp_(max=n - 1)
        picks[t : t + 1] = i
        if t + 1 < steps:
            torch.minimum(mind, sqdist(i), out=mind)
        mind.index_fill_(0, i, 0)
    return picks
