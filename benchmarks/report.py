"""Turn pytest-benchmark JSON files of ``bench_*.py`` into the markdown of ``RESULTS.md``.

Usage::

    python benchmarks/report.py benchmarks/results-full.json       # print the markdown
    python benchmarks/report.py benchmarks/results-full.json --update benchmarks/RESULTS.md

``--update`` rewrites only the part of RESULTS.md between the ``report.py`` markers, so the written
notes around the tables survive a re-run. This module writes the k-center tables; BADGE and k-means
entries (``extra_info["family"]``) go to ``report_badge.py``, which writes its own section between
its own markers. Each section is rewritten only when the given files hold entries for it, so a run
of one family leaves the other's tables as they were. With several files, the k-center tables come
from the first file that has k-center entries.

Every number comes from the ``extra_info`` that ``bench_kcenter.py`` records: ``per_step_s`` is the
best (minimum over rounds) time of one run divided by the picks it made, so fastal (whole budget)
and a peer timed over fewer picks compare per step. Ratios are recomputed here from ``per_step_s``.
The bandwidth floor of a case is ``bytes(X) / B`` with ``B`` the highest read bandwidth measured in
the run (the session's first probe and a probe before every case), so a probe that landed in a noisy
moment cannot flatter a case.

Targets (issue 2, "Benchmarks"), evaluated on the CPU ``gauss`` pool unless stated:

1. fastal float32 unpruned within 1.5x of the bandwidth floor per step;
2. >= 10x faster per step than the per-step ``pairwise_distances`` loop;
3. >= 1.5x faster per step than the torch mat-vec loop;
4. float16 storage about 2x faster than float32 (counted as met at >= 1.8x);
5. pruning reads >= 3x fewer rows on the 100-component mixture, with picks identical to unpruned;
6. (GPU) >= 70% of device copy bandwidth per step; n = 1M, d = 512, float16, budget 10,000 < 5 s.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

PEERS = (
    ("sklearn_loop", "pairwise_distances loop"),
    ("torch_loop", "torch mat-vec loop"),
    ("skactiveml", "skactiveml CoreSet"),
    ("bmdal_maxdist", "bmdal-reg maxdist"),
)


def load(path: str) -> tuple[dict, list[dict]]:
    with open(path) as f:
        doc = json.load(f)
    rows = []
    for b in doc.get("benchmarks", []):
        e = dict(b.get("extra_info", {}))
        if "per_step_s" not in e or e.get("family", "kcenter") != "kcenter":
            continue
        e["name"] = b.get("name", "")
        rows.append(e)
    return doc, rows


def ms(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def ratio(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    return f"{x:.{digits}f}×" if x < 100 else f"{x:.0f}×"


def size(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1000, "k")):
        if n >= div and n % (div // 10) == 0:
            v = n / div
            return f"{v:g}{suffix}"
    return str(n)


class Run:
    """The cases of one JSON file, indexed by (device, data, n, d, budget, dtype, label)."""

    def __init__(self, doc: dict, rows: list[dict]):
        self.doc = doc
        self.rows = rows
        self.by_key = {
            (r["device"], r["data"], r["n"], r["d"], r["budget"], r["dtype"], r["label"]): r
            for r in rows
        }
        cpu = [r for r in rows if r["device"] == "cpu"]
        bws = [r.get(k) for r in cpu for k in ("bandwidth_gbs", "bandwidth_probe_gbs")]
        bws = [b for b in bws if b]
        self.bandwidth = max(bws) if bws else None
        probes = [r["bandwidth_probe_gbs"] for r in cpu if r.get("bandwidth_probe_gbs")]
        self.bandwidth_min = min(probes) if probes else None
        self.bandwidth_first = cpu[0].get("bandwidth_session_gbs") if cpu else None

    def get(self, device, data, n, d, b, dtype, label):
        return self.by_key.get((device, data, n, d, b, dtype, label))

    def step(self, *key) -> float | None:
        r = self.get(*key)
        return r["per_step_s"] if r else None

    def floor_s(self, r: dict) -> float:
        if r["device"] == "cpu" and self.bandwidth:
            return r["x_bytes_per_step"] / (self.bandwidth * 1e9)
        return r["floor_s"]

    def configs(self, device: str, data: str) -> list[tuple[int, int, int]]:
        keys = {
            (r["n"], r["d"], r["budget"])
            for r in self.rows
            if (r["device"], r["data"]) == (device, data)
        }
        return sorted(keys)


def _bound(r: dict | None) -> str:
    """ "≥" for a peer whose budget time is a lower bound (benchmarks/_extrapolate.py)."""
    return "≥" if r and r.get("lower_bound") else ""


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def header(run: Run) -> list[str]:
    doc, meta = run.doc, run.doc.get("fastal", {})
    cpu = doc.get("machine_info", {}).get("cpu", {})
    commit = doc.get("commit_info", {})
    env = meta.get("env", {})
    prefix = " ".join(f"{k}={v}" for k, v in env.items())
    cmd = f"{prefix} {meta.get('command', '')}".strip()
    out = ["## Run", ""]
    build = meta.get("build", {})
    if build.get("head"):
        changes = build.get("local_changes", [])
        built = build.get("_cpu_built", "?")
        out.append(
            f"- date: {doc.get('datetime', '?')}; fastal at commit {build['head'][:10]}"
            + (f" plus uncommitted changes to {', '.join(changes)}" if changes else "")
            + f" (at session start); `fastal._cpu` built {built}"
        )
    else:
        out.append(
            f"- date: {doc.get('datetime', '?')}; fastal commit {commit.get('id', '?')[:10]}"
            f"{' (dirty tree)' if commit.get('dirty') else ''}"
        )
    out.append(f"- command: `{cmd}`")
    sizes = meta.get("sizes", {})
    if sizes:
        out.append(
            f"- sizes: preset `{sizes.get('preset')}`, n ∈ {sizes.get('n')}, d ∈ {sizes.get('d')}, "
            f"budget ∈ {sizes.get('budget')}; slow peers timed over "
            f"max(20, {sizes.get('peer_elems', 0):.0e} / (n·d)) picks (at most the budget)"
        )
    model = meta.get("cpu_model") or cpu.get("brand_raw", "?")
    cores = meta.get("cores") or cpu.get("count", "?")
    mem = meta.get("memory_gib")
    out.append(
        f"- machine: {model}, {cores} cores"
        + (f", {mem:.0f} GiB memory" if mem else "")
        + f"; fastal OpenMP threads: {meta.get('fastal_threads', '?')}"
        + f"; CUDA: {meta.get('cuda', False)}"
    )
    if run.bandwidth:
        mib = sizes.get("bandwidth_bytes", 0) / 2**20
        extra = []
        if run.bandwidth_first:
            extra.append(f"session start {run.bandwidth_first:.1f}")
        if run.bandwidth_min:
            extra.append(f"lowest per-case probe {run.bandwidth_min:.1f} GB/s")
        out.append(
            f"- read bandwidth (`fastal._ext.cpu.parallel_sum` over {mib:.0f} MiB of float32, "
            f"best of several): **{run.bandwidth:.1f} GB/s**, the highest seen, used for every "
            f"floor" + (f" ({', '.join(extra)})" if extra else "")
        )
    out.append("")
    return out


def cpu_table(run: Run) -> list[str]:
    configs = run.configs("cpu", "gauss")
    if not configs:
        return []
    out = [
        "## CPU, Gaussian pool (N(0, I), float32 unless stated): per step",
        "",
        "fastal ms/step is one `fastal.kcenter` call over the whole budget divided by the budget. "
        "*floor* is bytes of X over the read bandwidth; *×floor* = fastal time / floor "
        "(target ≤ 1.5). Speed-ups are peer ms/step over fastal float32 unpruned ms/step, measured "
        "in the same run. float16/bfloat16 columns give ms/step and the speed-up over float32; "
        "*pruned* gives the cost of "
        "pruning where it cannot help (speed-up over unpruned, < 1 is overhead).",
        "",
        "| n | d | budget | fastal ms/step | floor ms | ×floor | vs pairwise_distances loop | "
        "vs torch loop | vs skactiveml | vs bmdal-reg | float16 ms (×) | bfloat16 ms (×) | "
        "pruned ms (×) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, d, b in configs:
        base = run.get("cpu", "gauss", n, d, b, "float32", "fastal")
        if base is None:
            continue
        f32 = base["per_step_s"]
        floor = run.floor_s(base)
        cells = [size(n), str(d), str(b), ms(f32 * 1e3), ms(floor * 1e3), ratio(f32 / floor, 2)]
        for peer, _ in PEERS:
            r = run.get("cpu", "gauss", n, d, b, "float32", peer)
            cells.append(_bound(r) + ratio(div(r and r["per_step_s"], f32)))
        for dtype, label in (
            ("float16", "fastal"),
            ("bfloat16", "fastal"),
            ("float32", "fastal_pruned"),
        ):
            s = run.step("cpu", "gauss", n, d, b, dtype, label)
            cells.append(f"{ms(s * 1e3)} ({ratio(div(f32, s), 2)})" if s else "–")
        out.append("| " + " | ".join(cells) + " |")
    out += ["", "Peers' own per-step times (ms; picks timed in parentheses):", ""]
    out.append("| n | d | budget | " + " | ".join(name for _, name in PEERS) + " |")
    out.append("|---:|---:|---:|" + "---:|" * len(PEERS))
    for n, d, b in configs:
        cells = [size(n), str(d), str(b)]
        for peer, _ in PEERS:
            r = run.get("cpu", "gauss", n, d, b, "float32", peer)
            cells.append(f"{_bound(r)}{ms(r['per_step_s'] * 1e3)} ({r['steps']})" if r else "–")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def mixture_table(run: Run, device: str = "cpu") -> list[str]:
    configs = run.configs(device, "mixture")
    if not configs:
        return []
    out = [
        f"## {device.upper()}, 100-component Gaussian mixture: triangle-inequality pruning",
        "",
        "Centres N(0, I), points centre + N(0, 0.25² I), float32. Rows read are those whose "
        "distance "
        "to the new centre was computed, over all steps, against the unpruned count.",
        "",
        "| n | d | budget | unpruned ms/step | pruned ms/step | speed-up | rows read | "
        "fewer rows | picks identical |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for n, d, b in configs:
        u = run.get(device, "mixture", n, d, b, "float32", "fastal")
        p = run.get(device, "mixture", n, d, b, "float32", "fastal_pruned")
        if u is None or p is None:
            continue
        frac = p.get("rows_read_fraction")
        same = p.get("picks_equal_unpruned")
        out.append(
            "| " + " | ".join([
                size(n), str(d), str(b), ms(u["per_step_s"] * 1e3), ms(p["per_step_s"] * 1e3),
                ratio(div(u["per_step_s"], p["per_step_s"]), 2),
                f"{100 * frac:.1f}%" if frac is not None else "–",
                ratio(div(1.0, frac)) if frac else "–",
                {True: "yes", False: "**no**", None: "–"}[same],
            ]) + " |"
        )  # fmt: skip
    out.append("")
    return out


def gpu_table(run: Run) -> list[str]:
    rows = [r for r in run.rows if r["device"] == "cuda" and r["data"] == "gauss"]
    if not rows:
        return []
    out = [
        "## GPU, Gaussian pool",
        "",
        "*of copy BW* = (bytes of X / step time) over the device copy bandwidth "
        "(read + write bytes).",
        "",
        "| n | d | budget | dtype | fastal ms/step | of copy BW | total s | pruned ms/step | "
        "torch loop ms/step | vs torch loop |",
        "|---:|---:|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["n"], r["d"], r["budget"], r["dtype"]) for r in rows})
    for n, d, b, t in keys:
        f = run.get("cuda", "gauss", n, d, b, t, "fastal")
        p = run.get("cuda", "gauss", n, d, b, t, "fastal_pruned")
        tl = run.get("cuda", "gauss", n, d, b, t, "torch_loop")
        if f is None:
            continue
        s = f["per_step_s"]
        of_bw = f["floor_s"] / s
        out.append(
            "| " + " | ".join([
                size(n), str(d), str(b), t, ms(s * 1e3), f"{100 * of_bw:.0f}%",
                f"{f['seconds_min']:.2f}", ms(p["per_step_s"] * 1e3) if p else "–",
                ms(tl["per_step_s"] * 1e3) if tl else "–",
                ratio(div(tl["per_step_s"], s)) if tl else "–",
            ]) + " |"
        )  # fmt: skip
    out.append("")
    return out


def targets(run: Run) -> list[str]:
    checks: dict[str, list[tuple[str, float, bool]]] = defaultdict(list)
    for n, d, b in run.configs("cpu", "gauss"):
        cfg = f"n={size(n)} d={d} b={b}"
        base = run.get("cpu", "gauss", n, d, b, "float32", "fastal")
        if base is None:
            continue
        f32 = base["per_step_s"]
        x = f32 / run.floor_s(base)
        checks["1. float32 unpruned ≤ 1.5× the bandwidth floor per step"].append((cfg, x, x <= 1.5))
        for peer, goal, name in (
            ("sklearn_loop", 10.0, "2. ≥ 10× faster than the pairwise_distances loop"),
            ("torch_loop", 1.5, "3. ≥ 1.5× faster than the torch loop"),
        ):
            e = run.get("cpu", "gauss", n, d, b, "float32", peer)
            r = div(e and e["per_step_s"], f32)
            if r is not None and not (e.get("lower_bound") and r < goal):  # else: unknown
                checks[name].append((cfg, r, r >= goal))
        r = div(f32, run.step("cpu", "gauss", n, d, b, "float16", "fastal"))
        if r is not None:
            checks["4. float16 about 2× faster than float32 (≥ 1.8×)"].append((cfg, r, r >= 1.8))
    for n, d, b in run.configs("cpu", "mixture"):
        p = run.get("cpu", "mixture", n, d, b, "float32", "fastal_pruned")
        if p is None or not p.get("rows_read_fraction"):
            continue
        red = 1.0 / p["rows_read_fraction"]
        ok = red >= 3.0 and bool(p.get("picks_equal_unpruned"))
        checks["5. pruning reads ≥ 3× fewer rows on the mixture, identical picks"].append(
            (f"n={size(n)} d={d} b={b}", red, ok)
        )
    for r in run.rows:
        if r["device"] != "cuda" or r["label"] != "fastal" or r["data"] != "gauss":
            continue
        cfg = f"n={size(r['n'])} d={r['d']} b={r['budget']} {r['dtype']}"
        frac = r["floor_s"] / r["per_step_s"]
        checks["6a. GPU ≥ 70% of device copy bandwidth per step"].append((cfg, frac, frac >= 0.7))
        if (r["n"], r["d"], r["budget"], r["dtype"]) == (1_000_000, 512, 10_000, "float16"):
            checks["6b. GPU n=1M d=512 float16 budget 10k in < 5 s"].append(
                (cfg, r["seconds_min"], r["seconds_min"] < 5.0)
            )
    out = ["## Targets", "", "| target | met | values (config: value) |", "|:---|:---:|:---|"]
    for name in sorted(checks):
        items = checks[name]
        met = sum(ok for _, _, ok in items)
        vals = "; ".join(f"{cfg}: {v:.2f}{'' if ok else ' ✗'}" for cfg, v, ok in items)
        out.append(f"| {name} | {met}/{len(items)} | {vals} |")
    if not any(k.startswith("6") for k in checks):
        out.append("| 6. GPU targets | unrun | no CUDA device in this run |")
    out.append("")
    return out


def render(doc: dict, rows: list[dict], title: str | None = None) -> str:
    run = Run(doc, rows)
    out = [f"# {title}", ""] if title else []
    out += header(run)
    out += targets(run)
    out += cpu_table(run)
    out += mixture_table(run, "cpu")
    out += gpu_table(run)
    out += mixture_table(run, "cuda")
    return "\n".join(out)


BEGIN, END = "<!-- report.py: begin -->", "<!-- report.py: end -->"


def update(path: str, text: str) -> None:
    """Replace what lies between the BEGIN and END markers of ``path`` (written notes stay)."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = (old.rstrip() + "\n\n" if old.strip() else ""), "\n"
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{text.rstrip()}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", help="files written by pytest --benchmark-json")
    ap.add_argument("--title", default=None, help="a level-1 heading to start with")
    ap.add_argument(
        "--update", metavar="MD", default=None,
        help="write the tables into MD between the report.py markers instead of printing them",
    )  # fmt: skip
    args = ap.parse_args(argv)
    try:
        import report_badge
    except ImportError:  # imported as benchmarks.report
        from . import report_badge
    texts = []
    for path in args.json:
        doc, rows = load(path)
        if rows:
            text = render(doc, rows, args.title)
            texts.append(text)
            if args.update:
                update(args.update, text)
            break
    docs, rows, skips = report_badge.load(args.json)
    if rows:
        text = report_badge.render(docs, rows, skips)
        texts.append(text)
        if args.update:
            report_badge.update(args.update, text)
    if not texts:
        print(f"{', '.join(args.json)}: no benchmark entries with extra_info", file=sys.stderr)
        return 1
    if not args.update:
        print("\n\n".join(texts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
