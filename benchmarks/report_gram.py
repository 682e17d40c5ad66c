"""A markdown table of ``bench_gram.py`` runs (batched Gram eigenvalues, issue 5) from
pytest-benchmark JSON files: one row per case and device, fastal's time (and the tridiagonal
kernel's, where the GPU default took the low-rank route, and the one-warp path's, forced, at orders
up to 32), each peer's, and fastal's speed-up over each peer measured in the same run (the last
column: the one-warp path's over float32 eigvalsh).

    python benchmarks/report_gram.py run.json [more.json ...]

Issue 5's targets: >= 3x batched ``torch.linalg.eigvalsh`` on the CPU at orders 32-256, >= 5x on a
GPU (``torch_eigvalsh``: float32, the peer the targets name).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

PEERS = ("torch_eigvalsh", "torch_eigvalsh_f64", "numpy_loop")


def load(paths: list[str]) -> dict:
    """(device, order, side, n_groups, D) -> {impl: extra_info} over all files (later wins)."""
    cases: dict = defaultdict(dict)
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        for b in doc.get("benchmarks", []):
            e = b.get("extra_info", {})
            group = b.get("group") or ""
            if not group.startswith("gram/") or "seconds" not in e:
                continue
            device = "cuda" if group.startswith("gram/cuda/") else "cpu"
            key = (device, e["size"], e["side"], e["n_groups"], e["D"])
            cases[key][e["impl"]] = e
    return cases


def seconds(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}"


def render(cases: dict) -> str:
    peers = [p for p in PEERS if any(p in impls for impls in cases.values())]
    head = ["device", "order, side", "groups", "fastal s", "tridiagonal s", "one warp s"]
    head += [f"{p} s" for p in peers] + [f"vs {p}" for p in peers] + ["one warp vs torch_eigvalsh"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(cases):
        device, order, side, n_groups, _ = key
        impls = cases[key]
        mine = impls.get("fastal", {}).get("seconds")
        tri = impls.get("fastal_tridiagonal", {}).get("seconds")
        warp = impls.get("fastal_warp", {}).get("seconds")
        row = [device, f"{order}, {side}", f"{n_groups:,}", seconds(mine), seconds(tri)]
        bound = {p: "≥" if impls.get(p, {}).get("lower_bound") else "" for p in peers}
        row += [seconds(warp)]
        row += [bound[p] + seconds(impls.get(p, {}).get("seconds")) for p in peers]
        for p in peers:
            theirs = impls.get(p, {}).get("seconds")
            row.append(f"{bound[p]}{theirs / mine:.1f}×" if theirs and mine else "–")
        eig = impls.get("torch_eigvalsh", {}).get("seconds")
        row.append(f"{eig / warp:.1f}×" if eig and warp else "–")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    cases = load(paths)
    if not cases:
        print(f"{', '.join(paths)}: no bench_gram.py entries", file=sys.stderr)
        return 1
    print(render(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
