"""Where the GPU time goes, for the two GPU targets not met yet (RESULTS.md, GPU section):

- top-b at n = 10^7, b = 10^5: fastal.iht_threshold, its binding alone (no Python checks; the
  default, and each implementation forced: the launch sequence and the fused kernel), one
  separate non-finite scan (fastal's first pass does that check now), the torch peer and
  torch.topk alone, a 40 MB copy for scale;
- the Gram eigenvalues at orders 16 (20,000 groups), 32 (10,000; both sides) and 64: gram_min_eig
  with int64 device groups (checked on the device) and int32 ones (checked on the host), the
  binding alone (its default choice, and for orders <= 32 each of its paths forced: one thread
  per matrix, small_max = 32, one warp per matrix, warp_max = 32, or one block per matrix,
  small_max = 0), the NaN scan of Z, and
  eigvalsh on matrices already built.

    python benchmarks/gpu_breakdown.py      # needs a CUDA GPU and fastal's CUDA module

Median of 15 timed runs after 3 warm-ups, each synchronised; milliseconds. Then per-kernel device
times (torch.profiler) of top-b, the order-16 Gram case and the order-1024 low-rank route.
"""

import statistics
import time

import numpy as np
import torch

import fastal


def ms(fn, reps: int = 15, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(out)


def top_b(rows: dict, n: int = 10_000_000, b: int = 100_000, alpha: float = 0.5) -> None:
    cuda, stream = fastal._ext.cuda, torch.cuda.current_stream().cuda_stream
    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(n, device="cuda", generator=g)
    sigma = torch.rand(n, device="cuda", generator=g)
    support = torch.empty(b, dtype=torch.int64, device="cuda")
    w = torch.empty(n, device="cuda")

    def peer():
        neg = (-s).clamp_min(0)
        return torch.topk(-(0.5 * neg * neg - alpha * sigma * sigma), b).indices

    rows["topb fastal.iht_threshold"] = ms(lambda: fastal.iht_threshold(s, sigma, b, alpha))
    for impl, name in ((-1, ""), (0, ", launches"), (1, ", fused")):
        rows[f"topb binding only{name}"] = ms(lambda impl=impl: cuda.iht_threshold(
            s.data_ptr(), sigma.data_ptr(), n, b, alpha, support.data_ptr(), w.data_ptr(), 0,
            stream, impl=impl,
        ))  # fmt: skip
    rows["topb count_nonfinite_rows x1"] = ms(
        lambda: cuda.count_nonfinite_rows("float32", s.data_ptr(), n, 1, 0, stream)
    )
    rows["topb torch peer (score + topk)"] = ms(peer)
    score = -(0.5 * (-s).clamp_min(0) ** 2 - alpha * sigma * sigma)
    rows["topb torch.topk alone"] = ms(lambda: torch.topk(score, b))
    rows["copy 40 MB (d2d)"] = ms(lambda: w.copy_(s))
    mine = fastal.iht_threshold(s, sigma, b, alpha)[0]
    same = torch.equal(torch.sort(mine).values, torch.sort(peer()).values)
    rows["topb same set as peer (1 = yes)"] = float(same)


def gram(rows: dict, size: int, side: str, n_groups: int) -> None:
    """bench_gram.py's shapes: D side |L| = 2 size, G = 20; S side D = 2 size."""
    cuda, stream = fastal._ext.cuda, torch.cuda.current_stream().cuda_stream
    if side == "D":
        D, m_lab, G = size, 2 * size, 20
    else:
        G = min(20, size // 2)
        D, m_lab = 2 * size, size - G
    N = m_lab + n_groups * G
    rng = np.random.default_rng(0)
    Z = torch.from_numpy(rng.standard_normal((N, D), dtype=np.float32)).cuda()
    perm = rng.permutation(N)
    lab = torch.from_numpy(np.sort(perm[:m_lab])).cuda()
    grp = torch.from_numpy(perm[m_lab : m_lab + n_groups * G].reshape(n_groups, G).copy()).cuda()
    mins = torch.empty(n_groups, dtype=torch.float64, device="cuda")
    rtol = max(m_lab + G, D) * float(np.finfo(np.float64).eps)
    key = f"gram {size}{side} x{n_groups}"
    rows[f"{key} fastal (device groups)"] = ms(lambda: fastal.gram_min_eig(Z, lab, grp))
    rows[f"{key} fastal (int32 groups: host check)"] = ms(
        lambda: fastal.gram_min_eig(Z, lab, grp.int())
    )

    def binding(small_max: int = -1, warp_max: int = -1):
        cuda.gram_min_eig(
            "float32", Z.data_ptr(), N, D, lab.data_ptr(), m_lab, grp.data_ptr(), n_groups, G,
            rtol, mins.data_ptr(), 0, 0, stream, small_max=small_max, warp_max=warp_max,
        )  # fmt: skip

    rows[f"{key} binding only"] = ms(binding)
    if min(m_lab + G, D) <= 32:
        rows[f"{key} binding only, one thread per matrix"] = ms(lambda: binding(32))
        rows[f"{key} binding only, one warp per matrix"] = ms(lambda: binding(0, 32))
        rows[f"{key} binding only, one block per matrix"] = ms(lambda: binding(0))
    rows[f"{key} gram_scan"] = ms(lambda: cuda.gram_scan("float32", Z.data_ptr(), N, D, 0, stream))
    lab_sorted = torch.sort(lab).values
    rows[f"{key} gram_scan + group check"] = ms(lambda: cuda.gram_scan(
        "float32", Z.data_ptr(), N, D, 0, stream, grp.data_ptr(), n_groups, G,
        lab_sorted.data_ptr(), m_lab,
    ))  # fmt: skip
    if size <= 32:  # eigvalsh of 10,000 order-64 matrices takes seconds
        order = min(m_lab + G, D)
        # random Wishart matrices of the groups' order and count, not the groups' Gram matrices:
        # eigvalsh's time depends on the order and the batch only
        K = torch.randn(n_groups, order, order, device="cuda")
        K = K @ K.transpose(1, 2)
        rows[f"{key} torch eigvalsh on built K"] = ms(
            lambda: torch.linalg.eigvalsh(K), reps=3, warm=1
        )


def kernel_table(label: str, fn, reps: int = 5, top: int = 12) -> None:
    """Per-kernel device time of fn (torch.profiler: CUPTI sees fastal's kernels too), averaged
    over reps calls after a warm-up: which launch of a fused pipeline costs what."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    print(f"\n{label}: device time per call by kernel (ms; {reps} calls)")
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: -e.device_time_total)
    for e in events[:top]:
        name = e.key if len(e.key) <= 70 else e.key[:67] + "..."
        print(f"  {name:70s} {e.device_time_total / reps / 1e3:9.4f}  x{e.count // reps}")


def profiles() -> None:
    """Kernel tables of the two unmet GPU targets and of the new Gram routes."""
    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(10_000_000, device="cuda", generator=g)
    sigma = torch.rand(10_000_000, device="cuda", generator=g)
    kernel_table("top-b n = 10^7, b = 10^5", lambda: fastal.iht_threshold(s, sigma, 100_000, 0.5))
    support = torch.empty(100_000, dtype=torch.int64, device="cuda")
    w = torch.empty_like(s)
    kernel_table("top-b n = 10^7, b = 10^5, fused", lambda: fastal._ext.cuda.iht_threshold(
        s.data_ptr(), sigma.data_ptr(), s.numel(), 100_000, 0.5, support.data_ptr(), w.data_ptr(),
        0, torch.cuda.current_stream().cuda_stream, impl=1,
    ))  # fmt: skip
    rng = np.random.default_rng(0)
    for label, (n, D, m_lab, G, n_groups) in {
        "Gram order 16, D side, 20,000 groups": (20_000 * 20 + 32, 16, 32, 20, 20_000),
        "Gram order 1024, D side, 200 groups (auto: low-rank)": (2048 + 4000, 1024, 2048, 20, 200),
    }.items():
        Z = torch.from_numpy(rng.standard_normal((n, D), dtype=np.float32)).cuda()
        lab = torch.arange(m_lab, device="cuda")
        grp = torch.arange(m_lab, m_lab + n_groups * G, device="cuda").reshape(n_groups, G)
        kernel_table(label, lambda Z=Z, lab=lab, grp=grp: fastal.gram_min_eig(Z, lab, grp), reps=2)


def main() -> None:
    if not (torch.cuda.is_available() and fastal.cuda_available()):
        raise SystemExit("needs a CUDA GPU and fastal built with its CUDA module")
    rows: dict = {}
    top_b(rows)
    for case in (
        (16, "D", 20_000),
        (16, "S", 20_000),
        (32, "D", 10_000),
        (32, "S", 10_000),
        (64, "D", 10_000),
    ):
        gram(rows, *case)
    print(torch.cuda.get_device_name(), "(ms)")
    for name, value in rows.items():
        print(f"{name:55s} {value:10.3f}")
    profiles()


if __name__ == "__main__":
    main()
