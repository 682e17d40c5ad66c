"""Turn pytest-benchmark JSON of ``bench_badge.py`` and ``bench_kmeans.py`` into RESULTS.md tables.

Usage::

    python benchmarks/report_badge.py run.json [more.json ...]            # print the markdown
    python benchmarks/report_badge.py run.json --update benchmarks/RESULTS.md

(``report.py`` calls this too when its JSON holds BADGE or k-means entries.) ``--update`` rewrites
only the part of RESULTS.md between the ``report_badge.py`` markers. Several files merge (a later
file's entry for the same case wins), so a separate full-size run of one case can join a medium run.

Targets (issue 3); the first three are evaluated on the CPU:

1. BADGE >= 10x faster than scikit-activeml's ``Badge`` at n = 100k, C = 10 (time for the whole
   budget; a peer timed over fewer picks is extrapolated from its set-up and per-pick time);
2. a k-means (Lloyd) iteration at least as fast as scikit-learn's (marginal per-iteration time,
   ``(fit - one iteration) / (n_iter - 1)``, from the same initial centres);
3. BADGE at n = 1M, C = 1000, d = 512 runs (where peers that materialise the n x C·d gradients
   cannot: their skip reasons are listed);
4. on a GPU, BADGE at n = 1M, C = 1000, d = 512, budget 1000 "in seconds": the measured time of
   each storage dtype (``bench_badge.py``'s ``cuda`` cases, run at ``FASTAL_BENCH=full``), met when
   under a minute; ``unrun: no CUDA device in this run`` when no run had a GPU.

The GPU cases (``device == "cuda"`` in ``extra_info``; older files without the field are CPU runs)
get tables of their own: BADGE with peak device memory, k-means++ and one Lloyd iteration against
the torch peers of ``bench_kmeans.py``.
"""

# ruff: noqa: RUF001  (the markdown it writes uses the multiplication sign on purpose)
from __future__ import annotations

import argparse
import json
import sys

BADGE_PEERS = (
    ("skactiveml", "scikit-activeml Badge"),
    ("small_text", "small-text BADGE"),
    ("distil", "distil BADGE"),
    ("torch_dense", "torch dense"),
)
BEGIN, END = "<!-- report_badge.py: begin -->", "<!-- report_badge.py: end -->"


def load(paths: list[str]) -> tuple[list[dict], list[dict], list[dict]]:
    """(docs, rows, skips) of the files; a row is an entry's ``extra_info`` plus its file index."""
    docs, rows, skips = [], {}, {}
    for i, path in enumerate(paths):
        with open(path) as f:
            doc = json.load(f)
        docs.append(doc)
        for b in doc.get("benchmarks", []):
            e = dict(b.get("extra_info", {}))
            if e.get("family") not in ("badge", "kmeans"):
                continue
            e["run"] = i
            rows[_key(e)] = e
        for s in doc.get("fastal", {}).get("skipped", []):
            if s.get("family") in ("badge", "kmeans"):
                skips[_key(s)] = {**s, "run": i}
    for k in rows:  # a case that ran somewhere is not skipped
        skips.pop(k, None)
    return docs, list(rows.values()), list(skips.values())


#: issue 3's GPU target: (n, C, d, budget), and "in seconds" read as under this many
GPU_TARGET = (1_000_000, 1000, 512, 1000)
GPU_TARGET_S = 60.0


def _key(e: dict) -> tuple:
    """An entry's case; files written before the GPU cases have no device / dtype (CPU, float32)."""
    dev = e.get("device", "cpu")
    if e.get("family") == "badge":
        dtype = e.get("dtype", "float32")
        return ("badge", dev, e["n"], e["C"], e["d"], e["budget"], dtype, e["impl"])
    return ("kmeans", dev, e["kind"], e["n"], e["d"], e["k"], e["impl"])


def size(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1000, "k")):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{suffix}"
    return str(n)


def secs(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 0.1:
        return f"{x:.2f}"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def ratio(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.1f}×" if x < 100 else f"{x:.0f}×"


def gb(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e9:.2f}"


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


class Data:
    def __init__(self, docs: list[dict], rows: list[dict], skips: list[dict]):
        self.docs, self.rows, self.skips = docs, rows, skips
        self.by_key = {_key(r): r for r in rows}
        self.skip_by_key = {_key(s): s for s in skips}

    def badge(self, n, C, d, b, impl, device="cpu", dtype="float32") -> dict | None:
        return self.by_key.get(("badge", device, n, C, d, b, dtype, impl))

    def badge_skip(self, n, C, d, b, impl, device="cpu", dtype="float32") -> dict | None:
        return self.skip_by_key.get(("badge", device, n, C, d, b, dtype, impl))

    def km(self, kind, n, d, k, impl, device="cpu") -> dict | None:
        return self.by_key.get(("kmeans", device, kind, n, d, k, impl))

    def configs(self, family: str, fields: tuple[str, ...], device: str = "cpu") -> list[tuple]:
        def mine(e: dict) -> bool:
            return e["family"] == family and e.get("device", "cpu") == device

        keys = {tuple(r[f] for f in fields) for r in self.rows if mine(r)}
        if family == "badge":
            keys |= {tuple(s[f] for f in fields) for s in self.skips if mine(s)}
        return sorted(keys)

    def cuda_run(self) -> bool:
        """Whether any of the runs had a usable GPU (conftest's ``fastal.cuda``)."""
        return any(doc.get("fastal", {}).get("cuda") for doc in self.docs)

    def gpu_names(self) -> list[str]:
        return sorted({r["device_name"] for r in self.rows if r.get("device_name")})


# ---------------------------------------------------------------------------------------------


def header(data: Data) -> list[str]:
    out = ["## Runs (BADGE, k-means)", ""]
    for i, doc in enumerate(data.docs):
        meta = doc.get("fastal", {})
        env = meta.get("env", {})
        prefix = " ".join(f"{k}={v}" for k, v in env.items())
        cmd = f"{prefix} {meta.get('command', '')}".strip()
        build = meta.get("build", {})
        when = doc.get("datetime", "?")
        fams = sorted({r["family"] for r in data.rows if r["run"] == i})
        line = f"- run {i + 1} ({', '.join(fams) or 'no entries kept'}): {when}"
        if build.get("head"):
            changes = build.get("local_changes", [])
            if len(changes) > 6:
                dirs = sorted({c.split("/")[0] for c in changes})
                what = f" plus uncommitted changes to {len(changes)} files in {', '.join(dirs)}"
            else:
                what = " plus uncommitted changes to " + ", ".join(changes) if changes else ""
            line += f"; fastal at commit {build['head'][:10]}{what} (at session start)"
        out.append(line)
        out.append(f"  - command: `{cmd}`")
        mem = meta.get("memory_gib")
        out.append(
            f"  - machine: {meta.get('cpu_model', '?')}, {meta.get('cores', '?')} cores"
            + (f", {mem:.0f} GiB memory" if mem else "")
            + f"; fastal OpenMP threads: {meta.get('fastal_threads', '?')}"
        )
        budgets = {r.get("memory_budget_bytes") for r in data.rows if r["run"] == i}
        budgets.discard(None)
        if budgets:
            out.append(
                "  - memory budget for a case (FASTAL_BENCH_MEM_GB): "
                + ", ".join(f"{b / 1e9:g} GB" for b in sorted(budgets))
            )
    out.append("")
    return out


def _peer_cell(data: Data, cfg: tuple, impl: str, base: float | None) -> str:
    r = data.badge(*cfg, impl)
    if r is None:
        s = data.badge_skip(*cfg, impl)
        if s is None:
            return "–"
        if "memory budget" in s["reason"]:
            return f"skip (est. {s.get('estimate_bytes', 0) / 1e9:.0f} GB)"
        return "skip (not installed)" if "importable" in s["reason"] else "skip"
    return _estimated(r["budget_s"], base, r.get("budget_s_estimated"), r.get("lower_bound"))


def _estimated(t: float, base: float | None, estimated: bool, lower_bound: bool) -> str:
    """``t`` and its ratio to ``base``: ``~`` extrapolated, ``≥`` a lower bound (the timed run)."""
    if lower_bound:
        return f"≥{secs(t)} (≥{ratio(div(t, base))})"
    return f"{'~' if estimated else ''}{secs(t)} ({ratio(div(t, base))})"


def badge_tables(data: Data) -> list[str]:
    configs = data.configs("badge", ("n", "C", "d", "budget"))
    if not configs:
        return []
    out = [
        "## BADGE selection, CPU (float32 probabilities and features)",
        "",
        "Seconds for the whole budget. *fastal* is `BADGE().select({'probs': P, 'features': H})` "
        "(building the factored embedding included); *fastal emb* starts from a prebuilt "
        "`GradientEmbedding(A, H)`. Peers: seconds and, in parentheses, how many times longer "
        "than *fastal* they take; `~` marks a time extrapolated from a run over fewer picks "
        "(set-up + per-pick × budget, see `benchmarks/_extrapolate.py`), `≥` the time of a "
        "run over fewer picks whose picks took under half of it beside the set-up (a lower "
        "bound: extrapolating would multiply the noise of a shared machine). "
        "*skip (est. N GB)*: the peer's "
        "estimated peak memory exceeds the run's memory budget.",
        "",
        "| n | C | d | budget | fastal s | fastal emb s | "
        + " | ".join(name for _, name in BADGE_PEERS)
        + " |",
        "|---:|---:|---:|---:|---:|---:|" + "---:|" * len(BADGE_PEERS),
    ]
    for cfg in configs:
        f = data.badge(*cfg, "fastal")
        e = data.badge(*cfg, "fastal_emb")
        base = f["budget_s"] if f else (e["budget_s"] if e else None)
        cells = [size(cfg[0]), str(cfg[1]), str(cfg[2]), str(cfg[3])]
        cells.append(secs(f["budget_s"]) if f else _peer_cell(data, cfg, "fastal", None))
        cells.append(secs(e["budget_s"]) if e else _peer_cell(data, cfg, "fastal_emb", None))
        cells += [_peer_cell(data, cfg, p, base) for p, _ in BADGE_PEERS]
        out.append("| " + " | ".join(cells) + " |")
    out += [
        "",
        "Peak memory (GB) of one selection, measured in a fresh process per case: the process's "
        "peak resident size during the selection (inputs and imported code included), and in "
        "parentheses the growth over the resident size just before it. In brackets, where fewer "
        "than the budget, the picks the memory was measured over.",
        "",
        "| n | C | d | budget | inputs GB | fastal | fastal emb | "
        + " | ".join(name for _, name in BADGE_PEERS)
        + " |",
        "|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(BADGE_PEERS),
    ]
    impls = ("fastal", "fastal_emb", *(p for p, _ in BADGE_PEERS))
    for cfg in configs:
        n, C, d, b = cfg
        cells = [size(n), str(C), str(d), str(b), gb(4 * n * (C + d))]
        for impl in impls:
            r = data.badge(*cfg, impl)
            if r is None:
                cells.append("–")
                continue
            picks = r.get("memory_steps", r["steps"])  # older runs: the timed picks
            if r.get("peak_rss_bytes") is None:
                cells.append("n/m" + (f" [{picks}]" if picks < b else ""))
                continue
            cell = f"{gb(r['peak_rss_bytes'])} ({gb(r.get('peak_extra_bytes'))})"
            if picks < b:
                cell += f" [{picks}]"
            cells.append(cell)
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def kmeans_tables(data: Data) -> list[str]:
    out: list[str] = []
    lloyd = data.configs("kmeans", ("n", "d", "k"))
    lloyd = [c for c in lloyd if data.km("fit", *c, "fastal") or data.km("iter1", *c, "fastal")]
    if lloyd:
        iters = sorted({r["max_iter"] for r in data.rows if r.get("kind") == "fit"})
        out += [
            "## k-means (Lloyd), CPU, Gaussian pool (float32)",
            "",
            "Same initial centres for all three (k rows drawn with a fixed seed), `tol = 0`, "
            f"`max_iter` = {', '.join(map(str, iters))} for the fit. *ms/iter* is the marginal "
            "cost of one iteration, (fit − one iteration) / (n_iter − 1); ratios are peer time "
            "over fastal time (> 1: fastal faster). *1 iter* is one whole call with "
            "`max_iter = 1` (set-up and the final assignment included); *noise*: the fit took no "
            "longer than the one iteration (a shared machine). Inertia of the fit: "
            "scikit-learn's value, and fastal's and faiss's relative difference to it.",
            "",
            "| n | d | k | fastal ms/iter | sklearn ms/iter | faiss ms/iter | vs sklearn | "
            "vs faiss | 1 iter s: fastal / sklearn / faiss | fit s: fastal / sklearn / faiss "
            "| iters | inertia (sklearn) | fastal Δ | faiss Δ |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, d, k in lloyd:
            fit = {i: data.km("fit", n, d, k, i) for i in ("fastal", "sklearn", "faiss")}
            one = {i: data.km("iter1", n, d, k, i) for i in ("fastal", "sklearn", "faiss")}
            per = {i: (fit[i] or {}).get("per_iter_s") for i in fit}

            def ms(x):
                if x == 0.0:
                    return "noise"  # the fit took no longer than one iteration
                return secs(x * 1e3) if x is not None else "–"

            def rel(r):
                v = (r or {}).get("inertia_rel_to_sklearn")
                return "–" if v is None else f"{v:+.1e}"

            ref = fit["sklearn"]
            pf, ps, px = per["fastal"], per["sklearn"], per["faiss"]
            out.append(
                "| " + " | ".join([
                    size(n), str(d), str(k), ms(pf), ms(ps), ms(px),
                    ratio(div(ps, pf)), ratio(div(px, pf)),
                    " / ".join(secs(r["seconds_min"]) if r else "–" for r in one.values()),
                    " / ".join(secs(r["seconds_min"]) if r else "–" for r in fit.values()),
                    "/".join(str(r["n_iter"]) if r else "–" for r in fit.values()),
                    f"{ref['inertia']:.6g}" if ref else "–", rel(fit["fastal"]), rel(fit["faiss"]),
                ]) + " |"
            )  # fmt: skip
        out.append("")
    pp = [c for c in data.configs("kmeans", ("n", "d", "k")) if data.km("pp", *c, "fastal")]
    if pp:
        out += [
            "## k-means++ seeding, CPU, Gaussian pool (float32)",
            "",
            "Seconds to draw k seeds. scikit-learn's `kmeans_plusplus` with `n_local_trials=1` "
            "(plain D² sampling, like fastal's) and with its default greedy `2 + log k` trials; "
            "`~`: extrapolated from fewer seeds, `≥`: the time of fewer seeds (a lower bound, as "
            "above). *potential*: sum of squared distances to the "
            "nearest seed (lower is better; only where all k seeds were drawn), relative to "
            "fastal's.",
            "",
            "| n | d | k | fastal s | sklearn t=1 s (×) | sklearn greedy s (×) | "
            "fastal potential | t=1 potential | greedy potential |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, d, k in pp:
            f = data.km("pp", n, d, k, "fastal")
            t1 = data.km("pp", n, d, k, "sklearn_t1")
            gr = data.km("pp", n, d, k, "sklearn_greedy")

            def cell(r, f=f):
                if r is None:
                    return "–"
                return _estimated(
                    r["total_s"], f["total_s"], r.get("total_s_estimated"), r.get("lower_bound")
                )

            def pot(r, f=f):
                if r is None or r.get("potential") is None or not f.get("potential"):
                    return "–"
                return f"{r['potential'] / f['potential']:.3f}"

            out.append(
                "| " + " | ".join([
                    size(n), str(d), str(k), secs(f["total_s"]), cell(t1), cell(gr),
                    f"{f['potential']:.6g}" if f.get("potential") else "–", pot(t1), pot(gr),
                ]) + " |"
            )  # fmt: skip
        out.append("")
    return out


def targets(data: Data) -> list[str]:
    rows: list[tuple[str, str, str]] = []
    # 1. BADGE vs scikit-activeml at n = 100k, C = 10
    items = []
    for n, C, d, b in data.configs("badge", ("n", "C", "d", "budget")):
        if (n, C) != (100_000, 10):
            continue
        f, s = data.badge(n, C, d, b, "fastal"), data.badge(n, C, d, b, "skactiveml")
        cfg = f"d={d} b={b}"
        if f and s:
            r = s["budget_s"] / f["budget_s"]
            est = " (peer extrapolated)" if s.get("budget_s_estimated") else ""
            met: bool | None = r >= 10
            if s.get("lower_bound"):  # the peer's time is at least this: below 10×, unknown
                est, met = " (at least: the peer's time is a lower bound)", r >= 10 or None
            items.append((cfg, f"{r:.1f}×{est}", met))
        elif f:
            sk = data.badge_skip(n, C, d, b, "skactiveml")
            items.append((cfg, f"unrun: {sk['reason'] if sk else 'no skactiveml entry'}", None))
    rows.append(_target("1. BADGE ≥ 10× faster than scikit-activeml Badge, n=100k, C=10", items))
    # 2. k-means iteration vs scikit-learn
    items = []
    for n, d, k in data.configs("kmeans", ("n", "d", "k")):
        f, s = data.km("fit", n, d, k, "fastal"), data.km("fit", n, d, k, "sklearn")
        if not f or not s:
            continue
        cfg = f"n={size(n)} d={d} k={k}"
        r = div(s.get("per_iter_s"), f.get("per_iter_s"))
        if s.get("per_iter_s") == 0.0:
            why = "unmeasured: scikit-learn's fit took no longer than its one iteration (noise)"
            items.append((cfg, why, None))
        elif r is None and f.get("per_iter_s") == 0.0:
            why = "unmeasured: fastal's fit took no longer than its one iteration (noise)"
            items.append((cfg, why, None))
        elif r is None:
            items.append((cfg, "no per-iteration time (a fit of one iteration)", None))
        else:
            items.append((cfg, f"{r:.2f}×", r >= 1.0))
    name = "2. k-means iteration at least as fast as scikit-learn's (ratio ≥ 1)"
    rows.append(_target(name, items))
    # 3. the n = 1M, C = 1000, d = 512 case
    items = []
    for n, C, d, b in data.configs("badge", ("n", "C", "d", "budget")):
        if (n, C, d) != (1_000_000, 1000, 512):
            continue
        ran = [(i, data.badge(n, C, d, b, i)) for i in ("fastal", "fastal_emb")]
        ran = [(i, r) for i, r in ran if r]
        peers = []
        for p, name in BADGE_PEERS:
            sk = data.badge_skip(n, C, d, b, p)
            if sk and "memory budget" in sk["reason"]:
                peers.append(f"{name} needs ~{sk['estimate_bytes'] / 1e9:.0f} GB")
            elif data.badge(n, C, d, b, p):
                peers.append(f"{name} ran")
        note = f"; peers: {', '.join(peers)}" if peers else ""
        if ran:
            txt = "; ".join(
                f"{i} {secs(r['budget_s'])} s"
                + (f", peak {gb(r['peak_rss_bytes'])} GB" if r.get("peak_rss_bytes") else "")
                for i, r in ran
            )
            items.append((f"b={b}", txt + note, True))
        else:
            sk = data.badge_skip(n, C, d, b, "fastal_emb") or data.badge_skip(n, C, d, b, "fastal")
            items.append((f"b={b}", f"unrun: {sk['reason'] if sk else 'no entry'}" + note, False))
    name = "3. BADGE runs at n=1M, C=1000, d=512 (peers that materialise cannot)"
    rows.append(_target(name, items))
    rows.append(gpu_target(data))
    out = ["## Targets (issue 3)", "", "| target | met | values |", "|:---|:---:|:---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    out.append("")
    return out


def gpu_target(data: Data) -> tuple[str, str, str]:
    """Target 4: BADGE at n = 1M, C = 1000, d = 512, budget 1000 on a GPU, in seconds."""
    n, C, d, b = GPU_TARGET
    name = f"4. GPU: BADGE n=1M C={C} b={b} in seconds (d={d}; < {GPU_TARGET_S:.0f} s)"
    items: list[tuple[str, str, bool | None]] = []
    for dtype in ("float32", "float16"):
        r = data.badge(n, C, d, b, "fastal_emb", "cuda", dtype)
        if r is not None:
            txt = f"{secs(r['budget_s'])} s"
            if r.get("peak_device_bytes") is not None:
                txt += f", peak {gb(r['peak_device_bytes'])} GB on the device"
            if r.get("device_name"):
                txt += f" ({r['device_name']})"
            items.append((dtype, txt, r["budget_s"] < GPU_TARGET_S))
            continue
        sk = data.badge_skip(n, C, d, b, "fastal_emb", "cuda", dtype)
        if sk is not None:
            items.append((dtype, f"unrun: {sk['reason']}", None))
    if not items:
        why = "no CUDA device in this run"
        if data.cuda_run():
            why = "not in these runs (the cuda cases of bench_badge.py at FASTAL_BENCH=full)"
        return name, "unrun", f"unrun: {why}"
    dense = data.badge(n, C, d, b, "torch_dense", "cuda")
    sk = data.badge_skip(n, C, d, b, "torch_dense", "cuda")
    if dense is not None:
        items.append(("torch dense", f"{secs(dense['budget_s'])} s", None))
    elif sk is not None and "memory budget" in sk["reason"]:
        est = sk.get("estimate_device_bytes", 0) / 1e9
        items.append(("torch dense", f"needs ~{est:.0f} GB of device memory", None))
    return _target(name, items)


def _target(name: str, items: list[tuple[str, str, bool | None]]) -> tuple[str, str, str]:
    judged = [ok for _, _, ok in items if ok is not None]
    if not judged:
        return name, "unrun", "; ".join(f"{c}: {v}" for c, v, _ in items) or "not in these runs"
    met = f"{sum(judged)}/{len(judged)}"
    vals = "; ".join(f"{c}: {v}{' ✗' if ok is False else ''}" for c, v, ok in items)
    return name, met, vals


def _gpu_badge_cell(data: Data, cfg: tuple, impl: str, dtype: str, base: float | None) -> str:
    r = data.badge(*cfg, impl, "cuda", dtype)
    if r is None:
        s = data.badge_skip(*cfg, impl, "cuda", dtype)
        if s is None:
            return "–"
        if "memory budget" in s["reason"]:
            return f"skip (est. {s.get('estimate_device_bytes', 0) / 1e9:.0f} GB)"
        return "skip"
    t = r["budget_s"]
    return secs(t) if base is None else f"{secs(t)} ({ratio(div(t, base))})"


def gpu_badge_table(data: Data) -> list[str]:
    configs = data.configs("badge", ("n", "C", "d", "budget"), "cuda")
    if not configs:
        return []
    names = data.gpu_names()
    impls = (("fastal_emb", "float32"), ("fastal_emb", "float16"), ("torch_dense", "float32"))
    out = [
        "## BADGE selection, GPU" + (f" ({', '.join(names)})" if names else ""),
        "",
        "Seconds for the whole budget, the device synchronized inside the timing. *fastal emb* is "
        "`BADGE().select(GradientEmbedding(A, H))` with A and H torch-CUDA tensors in the given "
        "storage (built outside the timing); *torch dense* materialises the n × C·d float32 "
        "gradients on the device and runs a device-resident D² loop, in parentheses how many "
        "times longer than fastal emb float32 it takes. Pools are drawn on the device (same "
        "distributions as the CPU pools, not the same numbers). Peak device memory: "
        "`torch.cuda.max_memory_allocated()` over the timed runs (inputs included), in "
        "parentheses the growth over what was allocated before them. *skip (est. N GB)*: the "
        "case's estimated device memory exceeds the run's budget.",
        "",
        "| n | C | d | budget | fastal emb float32 s | fastal emb float16 s | torch dense s | "
        "peak GB float32 | peak GB float16 | peak GB torch dense |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cfg in configs:
        f = data.badge(*cfg, "fastal_emb", "cuda", "float32")
        base = f["budget_s"] if f else None
        cells = [size(cfg[0]), str(cfg[1]), str(cfg[2]), str(cfg[3])]
        cells.append(_gpu_badge_cell(data, cfg, "fastal_emb", "float32", None))
        cells.append(_gpu_badge_cell(data, cfg, "fastal_emb", "float16", None))
        cells.append(_gpu_badge_cell(data, cfg, "torch_dense", "float32", base))
        for impl, dtype in impls:
            r = data.badge(*cfg, impl, "cuda", dtype)
            if r is None or r.get("peak_device_bytes") is None:
                cells.append("–")
            else:
                cells.append(
                    f"{gb(r['peak_device_bytes'])} ({gb(r.get('peak_device_extra_bytes'))})"
                )
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def gpu_kmeans_table(data: Data) -> list[str]:
    configs = data.configs("kmeans", ("n", "d", "k"), "cuda")
    if not configs:
        return []
    names = data.gpu_names()
    out = [
        "## k-means++ seeding and one Lloyd iteration, GPU"
        + (f" ({', '.join(names)})" if names else ""),
        "",
        "Seconds, the device synchronized inside the timing; the CPU cases' Gaussian pool "
        "(float32) moved to the device. *torch*: device-resident loops written in "
        "`bench_kmeans.py` (k-means++ from fastal's random stream; Lloyd by chunked `addmm` "
        "arg-min and `index_add_`); in parentheses how many times longer than fastal they take. "
        "*agree*: leading picks identical to fastal's. *1 iter*: one whole `max_iter = 1` call "
        "(set-up and the final assignment included); Δ: fastal's inertia relative to torch's.",
        "",
        "| n | d | k | k-means++ fastal s | k-means++ torch s | agree | 1 iter fastal s | "
        "1 iter torch s | inertia Δ | peak GB (fastal k-means++ / 1 iter) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, d, k in configs:
        pf, pt = data.km("pp", n, d, k, "fastal", "cuda"), data.km("pp", n, d, k, "torch", "cuda")
        lf = data.km("iter1", n, d, k, "fastal", "cuda")
        lt = data.km("iter1", n, d, k, "torch", "cuda")

        def t(r, base, key):
            if r is None:
                return "–"
            v = r[key]
            return secs(v) if base is None else f"{secs(v)} ({ratio(div(v, base[key]))})"

        def agree(r, k):
            v = (r or {}).get("agree_prefix_torch")
            return "–" if v is None else f"{v}/{k}"

        rel = (lf or {}).get("inertia_rel_to_torch")
        peaks = " / ".join(gb(r.get("peak_device_bytes")) if r else "–" for r in (pf, lf))
        out.append(
            "| " + " | ".join([
                size(n), str(d), str(k), t(pf, None, "total_s"), t(pt, pf, "total_s"),
                agree(pf, k),
                t(lf, None, "seconds_min"), t(lt, lf, "seconds_min"),
                "–" if rel is None else f"{rel:+.1e}", peaks,
            ]) + " |"
        )  # fmt: skip
    out.append("")
    return out


def render(docs: list[dict], rows: list[dict], skips: list[dict]) -> str:
    data = Data(docs, rows, skips)
    out = header(data) + targets(data) + badge_tables(data) + kmeans_tables(data)
    out += gpu_badge_table(data) + gpu_kmeans_table(data)
    return "\n".join(out)


def update(path: str, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between ``begin`` and ``end`` in ``path``; append them if absent."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        tail = rest.split(end, 1)[1]
    else:
        head, tail = (old.rstrip() + "\n\n" if old.strip() else ""), "\n"
    with open(path, "w") as f:
        f.write(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="files written by pytest --benchmark-json")
    ap.add_argument(
        "--update", metavar="MD", default=None,
        help="write the tables into MD between the report_badge.py markers instead of printing",
    )  # fmt: skip
    args = ap.parse_args(argv)
    docs, rows, skips = load(args.json)
    if not rows:
        print(f"{', '.join(args.json)}: no BADGE or k-means entries", file=sys.stderr)
        return 1
    text = render(docs, rows, skips)
    if args.update:
        update(args.update, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
