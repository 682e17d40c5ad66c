"""The `fastal` command line: default run on the bundled digits, `select` with .npy files."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEFAULT_PRUNE_MIN_ROW_BYTES
from numpy.testing import assert_array_equal

import fastal
from fastal import _cli_io, _io, cli


def test_default_run_on_bundled_digits(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "digits" in out
    assert "covering radius" in out
    assert "classes among the picks" in out
    assert "time:" in out  # the issue asks for radius before / after and the time


@pytest.mark.parametrize("option", ["--features", "--embeddings"])
def test_the_report_and_messages_name_the_option_typed(option, tmp_path, capsys):
    """--features is an alias of --embeddings; the report said --embeddings for either."""
    path = tmp_path / "pool.npy"
    np.save(path, np.random.default_rng(0).normal(size=(20, 3)))
    assert cli.main(["select", option, str(path), "--budget", "2"]) == 0
    assert f"fastal select: coreset on {option} {path}\n" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=f"^fastal: {option} file not found"):
        cli.main(["select", option, str(tmp_path / "missing.npy")])


def test_rows_read_line_explains_a_share_above_100_percent(capsys):
    """On the digits the pruned run reads the centre-to-centre distances too and skips little:
    more than an unpruned run, which the line must explain; with budget 0 nothing was read."""
    assert cli.main([]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "rows read" in ln]
    assert len(lines) == 1
    share = float(lines[0].split("rows read: ")[1].split("%")[0])
    assert share > 100
    assert "centre-to-centre reads outweighed the rows it skipped" in lines[0]
    assert cli.main(["select", "--no-prune"]) == 0
    assert "rows read: 100.0% of an unpruned run (pruning off)\n" in capsys.readouterr().out
    assert cli.main(["select", "--budget", "0"]) == 0
    assert "rows read" not in capsys.readouterr().out


def test_rows_read_line_says_why_pruning_stepped_aside(tmp_path, capsys, monkeypatch):
    """Rows of 16 float32 values (64 bytes) are not pruned: the line said 'pruning off' as if
    --no-prune had been passed."""
    monkeypatch.setattr(fastal.ops, "_PRUNE_MIN_ROW_BYTES", DEFAULT_PRUNE_MIN_ROW_BYTES)
    np.save(tmp_path / "pool.npy", np.random.default_rng(0).normal(size=(500, 16)).astype("f4"))
    assert cli.main(["select", "--embeddings", str(tmp_path / "pool.npy"), "--budget", "5"]) == 0
    out = capsys.readouterr().out
    assert "(pruning off: rows under 256 bytes cost less to read than the test)\n" in out


def test_select_writes_the_same_picks_as_the_api(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    labeled = np.array([3, 17, 42], dtype=np.int64)
    np.save(tmp_path / "pool.npy", X)
    np.save(tmp_path / "labeled.npy", labeled)
    out = tmp_path / "picks.npy"
    argv = [
        "select",
        "--strategy",
        "coreset",
        "--embeddings",
        str(tmp_path / "pool.npy"),
        "--labeled",
        str(tmp_path / "labeled.npy"),
        "--budget",
        "25",
        "--out",
        str(out),
    ]
    assert cli.main(argv) == 0
    picks = np.load(out, allow_pickle=False)
    assert picks.dtype == np.int64
    np.testing.assert_array_equal(picks, fastal.kcenter_greedy(X, 25, labeled=labeled))
    assert "wrote 25 indices" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_bilevel_takes_the_labeled_rows_classes(tmp_path):
    """--labels gives the labeled rows their true classes (eq. 1, 3), as labeled_targets does in
    the API; without it they get the model's pseudo-labels like the pool."""
    from fastal.strategies import BilevelCoreset

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(120, 5)).astype(np.float32)
    logits = rng.normal(size=(120, 3)).astype(np.float32)
    labeled = np.arange(0, 40, 2)
    classes = (np.argmax(logits[labeled], 1) + 1) % 3  # every one disagrees with the model
    for name, arr in [("f", feats), ("z", logits), ("lab", labeled), ("y", classes)]:
        np.save(tmp_path / f"{name}.npy", arr)
    base = [
        "select",
        "--strategy",
        "bilevel",
        "--embeddings",
        str(tmp_path / "f.npy"),
        "--logits",
        str(tmp_path / "z.npy"),
        "--labeled",
        str(tmp_path / "lab.npy"),
        "--budget",
        "10",
    ]
    picks = {}
    for with_labels in (False, True):
        out = tmp_path / f"picks{with_labels}.npy"
        extra = ["--labels", str(tmp_path / "y.npy")] if with_labels else []
        assert cli.main([*base, *extra, "--out", str(out)]) == 0
        picks[with_labels] = np.load(out)
        pool = {"logits": logits, "features": feats}
        if with_labels:
            pool["labeled_targets"] = classes
        api = BilevelCoreset().select(pool, 10, labeled, seed=0).indices
        np.testing.assert_array_equal(picks[with_labels], api)
    assert not np.array_equal(picks[False], picks[True])


def test_sparse_approx_fits_its_temperature_on_the_labeled_rows(tmp_path, capsys):
    """--labels with --logits: temperature="auto" fits T on the labeled rows' logits, as the API
    does with labeled_logits and labeled_targets (without them T = 1 and only sigma counts)."""
    from fastal.strategies import SparseApprox

    rng = np.random.default_rng(1)
    n, C = 200, 4
    z = 3 * rng.normal(size=(n, C))
    p2 = np.exp(z / 2) / np.exp(z / 2).sum(1, keepdims=True)
    y = (p2.cumsum(1) > rng.random((n, 1))).argmax(1)  # labels drawn at T = 2
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    labeled = np.arange(60)
    for name, arr in [
        ("f", feats),
        ("z", z.astype(np.float32)),
        ("lab", labeled),
        ("y", y[labeled]),
    ]:
        np.save(tmp_path / f"{name}.npy", arr)
    out = tmp_path / "picks.npy"
    argv = ["select", "--strategy", "sparse_approx", "--embeddings", str(tmp_path / "f.npy"),
            "--logits", str(tmp_path / "z.npy"), "--labeled", str(tmp_path / "lab.npy"),
            "--labels", str(tmp_path / "y.npy"), "--budget", "10", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    pool = {
        "logits": z.astype(np.float32),
        "features": feats,
        "labeled_logits": z[labeled].astype(np.float32),
        "labeled_targets": y[labeled],
    }
    api = SparseApprox().select(pool, 10, labeled, seed=0)
    assert api.diagnostics["temperature"] != 1.0
    np.testing.assert_array_equal(np.load(out), api.indices)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_select_dtype_cast(tmp_path, dtype):
    X = np.random.default_rng(1).normal(size=(200, 8))
    np.save(tmp_path / "pool.npy", X)
    argv = ["select", "--embeddings", str(tmp_path / "pool.npy"), "--budget", "5",
            "--dtype", dtype, "--out", str(tmp_path / "p.npy")]  # fmt: skip
    assert cli.main(argv) == 0
    assert np.load(tmp_path / "p.npy").shape == (5,)


def test_object_arrays_are_refused(tmp_path):
    np.save(tmp_path / "pool.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(SystemExit, match="cannot read --embeddings"):
        cli.main(["select", "--embeddings", str(tmp_path / "pool.npy")])


def test_missing_file_and_bad_budget(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        cli.main(["select", "--embeddings", str(tmp_path / "nope.npy")])
    np.save(tmp_path / "pool.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(SystemExit, match="budget"):
        cli.main(["select", "--embeddings", str(tmp_path / "pool.npy"), "--budget", "9"])


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "picks.npy"
    cli.save_npy_atomic(target, np.arange(3))

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cli.save_npy_atomic(target, np.arange(5))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["picks.npy"]


def test_dtype_check_refuses_finite_overflow_only():
    _cli_io._check_fits(np.array([1.0, np.inf, np.nan]), "float16", "--embeddings")
    _cli_io._check_fits(np.array([65504.0]), "float16", "--embeddings")  # the largest float16
    message = r"--dtype float16 overflows --embeddings: .* up to 7e\+04"
    with pytest.raises(SystemExit, match=message):
        _cli_io._check_fits(np.array([1.0, -7e4]), "float16", "--embeddings")


def test_dtype_check_refuses_a_cast_to_zeros_and_subnormals_only():
    _cli_io._check_fits(np.zeros(3), "float16", "--embeddings")  # nothing lost
    _cli_io._check_fits(np.array([np.nan, np.nan]), "float16", "--embeddings")  # refused later
    _cli_io._check_fits(np.array([1e-30, 2.0**-14]), "float16", "--embeddings")  # one normal
    _cli_io._check_fits(np.array([2.0**-126, -1e-300]), "bfloat16", "--embeddings")
    for dtype, largest in (("float16", 2.0**-15), ("bfloat16", 2.0**-127), ("float32", 1e-39)):
        with pytest.raises(SystemExit, match=f"--dtype {dtype} underflows --probs: .*largest"):
            _cli_io._check_fits(np.array([0.0, -largest, np.nan]), dtype, "--probs")


def test_radii_are_reported_to_five_significant_digits(tmp_path, capsys):
    """'%.4f' printed 0.0000 for a pool of scale 1e-20: the radii are now '%.5g'."""
    pool = np.random.default_rng(0).normal(size=(30, 4)) * 1e-20
    np.save(tmp_path / "pool.npy", pool)
    np.save(tmp_path / "lab.npy", np.arange(3))
    args = ["select", "--embeddings", str(tmp_path / "pool.npy"), "--labeled",
            str(tmp_path / "lab.npy"), "--budget", "3"]  # fmt: skip
    assert cli.main(args) == 0
    line = capsys.readouterr().out.split("covering radius: ")[1].split("\n")[0]
    before, after = float(line.split()[0]), float(line.split()[2])
    _, radius = fastal.kcenter_greedy(pool, 3, labeled=np.arange(3), return_radius=True)
    dist, _ = fastal.min_distance(pool, pool[:3])
    assert before == pytest.approx(float(np.max(dist)), rel=1e-5)
    assert after == pytest.approx(float(radius[-1]), rel=1e-5)


def test_atomic_save_writes_its_temporary_file_beside_the_target(tmp_path, monkeypatch):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    target = tmp_path / "out" / "picks.npy"
    target.parent.mkdir()
    seen = []

    def write(f):
        seen.append(sorted(p.name for p in target.parent.iterdir()))
        np.save(f, np.arange(4), allow_pickle=False)

    _io.write_atomic(target, write)
    assert len(seen[0]) == 1
    assert seen[0][0].startswith(".picks.npy.")
    assert sorted(p.name for p in target.parent.iterdir()) == ["picks.npy"]
    assert list(elsewhere.iterdir()) == []
    np.testing.assert_array_equal(np.load(target), np.arange(4))


def test_console_script_module_entry():
    res = subprocess.run([sys.executable, "-m", "fastal", "--help"], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0
    assert "select" in res.stdout


# ---------------------------------------------------------------------------------------------
# refusals: a one-line `fastal: ...` naming the argument on stderr, exit status 1, no traceback,
# and (the arguments are checked first) nothing run before it

HAS_PROC = Path("/proc/self").is_dir()  # /proc refuses new files even to root
NO_CUDA = not torch.cuda.is_available()


def test_empty_labeled_file_of_any_dtype_means_no_labels(tmp_path, capsys):
    """np.save of an empty list writes float64: it must act as no labeled set, report included."""
    X = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    np.save(tmp_path / "pool.npy", X)
    np.save(tmp_path / "lab.npy", np.array([]))
    out = tmp_path / "picks.npy"
    argv = ["select", "--embeddings", str(tmp_path / "pool.npy"), "--budget", "4", "--seed", "0",
            "--labeled", str(tmp_path / "lab.npy"), "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    np.testing.assert_array_equal(np.load(out), fastal.kcenter_greedy(X, 4, seed=0))
    assert "same budget picked at random" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32, np.int32])
@pytest.mark.parametrize("strategy", ["coreset", "coreset_gradients"])
def test_labeled_indices_of_any_integer_dtype_reach_the_report(tmp_path, capsys, dtype, strategy):
    """uint64 --labeled concatenated with the int64 random picks gave float64 indices: the
    covering-radius report raised a traceback after the picks were saved."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "pool.npy", rng.normal(size=(40, 3)).astype(np.float32))
    probs = rng.dirichlet(np.ones(3), size=40).astype(np.float32)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "lab.npy", np.array([1, 2, 3], dtype))
    argv = ["select", "--strategy", strategy, "--embeddings", str(tmp_path / "pool.npy"),
            "--budget", "4", "--seed", "0", "--labeled", str(tmp_path / "lab.npy")]  # fmt: skip
    if strategy == "coreset_gradients":
        argv += ["--probs", str(tmp_path / "probs.npy")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "same budget picked at random: radius" in out
    assert "not computed" not in out


def test_budget_zero_without_labels_reports_no_radius(tmp_path, capsys):
    np.save(tmp_path / "pool.npy", np.ones((10, 2), np.float32))
    argv = ["select", "--embeddings", str(tmp_path / "pool.npy"), "--budget", "0", "--out",
            str(tmp_path / "p.npy")]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "covering radius: undefined" in out
    assert "inf" not in out


@pytest.fixture
def cli_files(tmp_path):
    np.save(tmp_path / "pool.npy", np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    np.save(tmp_path / "lab0d.npy", np.array(3))
    np.save(tmp_path / "lab1d.npy", np.array([3, 4]))
    np.save(tmp_path / "probs.npy", np.full((50, 3), 1 / 3, np.float32))
    np.save(tmp_path / "mc.npy", np.full((4, 50, 3), 1 / 3, np.float32))
    np.save(tmp_path / "duals.npy", np.ones(2, np.float32))
    np.save(tmp_path / "dpred.npy", np.ones(50, np.float32))
    np.save(tmp_path / "struct.npy", np.zeros(50, dtype=[("a", "f4"), ("b", "f4")]))
    big = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    big[5] = 1e5
    np.save(tmp_path / "big16.npy", big)
    np.save(tmp_path / "tiny32.npy", big.astype(np.float64) * 1e-50)
    np.save(tmp_path / "empty_probs.npy", np.zeros((0, 3), np.float32))
    np.save(
        tmp_path / "pool15.npy", np.random.default_rng(1).normal(size=(15, 4)).astype(np.float32)
    )
    np.save(tmp_path / "probs15.npy", np.full((15, 3), 1 / 3, np.float32))
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo")
    np.savez(tmp_path / "arch.npz", features=np.zeros((50, 4), np.float32))
    (tmp_path / "text.npy").write_text("0.5, 1.5\n2.5, 3.5\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "afile").write_text("not a folder")
    return tmp_path


POOL = "select --embeddings {d}/pool.npy --budget 3"
DEMO = "demo --quick"
PROC = pytest.mark.skipif(not HAS_PROC, reason="no /proc")
#: (id, command line, words the message must hold, marks)
REFUSED = [
    ("out-no-folder", f"{POOL} --out {{d}}/missing/o.npy", ["--out", "does not exist"], ()),
    ("out-under-file", f"{POOL} --out {{d}}/afile/o.npy", ["--out", "not a folder"], ()),
    ("out-folder", f"{POOL} --out {{d}}", ["--out", "is a folder"], ()),
    ("out-slash", f"{POOL} --out {{d}}/new/", ["--out", "is a folder"], ()),
    ("out-empty", f"{POOL} --out ''", ["--out", "must name a file"], ()),
    ("out-proc", f"{POOL} --out /proc/o.npy", ["--out", "cannot create a file"], PROC),
    ("device-bogus", f"{POOL} --device bogus", ["--device", "cpu, cuda or cuda:N"], ()),
    ("device-meta", f"{POOL} --device meta", ["--device", "'meta'"], ()),
    (
        "device-cuda",
        f"{POOL} --device cuda",
        ["--device", "no CUDA device"],
        pytest.mark.skipif(not NO_CUDA, reason="CUDA is available"),
    ),
    ("device-index", f"{POOL} --device cuda:64", ["--device cuda:64"], ()),
    ("npz", "select --embeddings {d}/arch.npz", ["--embeddings", ".npz archive"], ()),
    ("text", "select --embeddings {d}/text.npy", ["--embeddings", "not a .npy file"], ()),
    ("empty", "select --embeddings {d}/empty.npy", ["--embeddings", "empty"], ()),
    ("npz-probs", "select --probs {d}/arch.npz", ["--probs", ".npz archive"], ()),
    ("lab-0d", f"{POOL} --labeled {{d}}/lab0d.npy", ["--labeled", "1-D", "shape ()"], ()),
    ("lab-0d-digits", "select --labeled {d}/lab0d.npy", ["--labeled", "1-D"], ()),
    ("lab-npz", f"{POOL} --labeled {{d}}/arch.npz", ["--labeled", ".npz archive"], ()),
    (
        "labels-alone",
        "select --strategy random --labels {d}/lab1d.npy",
        ["--labels", "per labeled row", "pass the pool"],
        (),
    ),
    (
        "duals-alone",
        "select --strategy random --duals {d}/lab1d.npy",
        ["--duals", "pass the pool"],
        (),
    ),
    ("ignored-probs", f"{POOL} --probs {{d}}/probs.npy", ["'coreset' would ignore --probs"], ()),
    (
        "ignored-logits",
        f"{POOL} --strategy badge --probs {{d}}/probs.npy --logits {{d}}/probs.npy",
        ["'badge' would ignore --logits"],
        (),
    ),
    (
        "mc-ignores-rest",
        "select --strategy sparse_approx --mc-probs {d}/mc.npy --embeddings {d}/pool.npy",
        ["'sparse_approx' would ignore --embeddings"],
        (),
    ),
    (
        "duals-and-predictions",
        "select --strategy ally --embeddings {d}/pool.npy --labeled "
        "{d}/lab1d.npy --duals {d}/duals.npy --dual-predictions {d}/dpred.npy",
        ["'ally' would ignore --duals"],
        (),
    ),
    (
        "no-prune-unsupported",
        f"{POOL} --strategy entropy --probs {{d}}/probs.npy --no-prune",
        ["'entropy' has no pruning to turn off"],
        (),
    ),
    (
        "labels-mc",
        "select --strategy sparse_approx --mc-probs {d}/mc.npy --labeled {d}/lab1d.npy "
        "--labels {d}/lab1d.npy",
        ["'sparse_approx' with --mc-probs would ignore it"],
        (),
    ),
    # a FIFO stands for a device such as /dev/null (which a regression would destroy as root)
    (
        "out-fifo",
        f"{POOL} --out {{d}}/fifo",
        ["--out", "not a regular file"],
        pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs"),
    ),
    ("structured", "select --embeddings {d}/struct.npy", ["--embeddings", "structured array"], ()),
    (
        "dtype-overflow",
        "select --embeddings {d}/big16.npy --dtype float16",
        ["--dtype float16 overflows --embeddings", "1e+05"],
        (),
    ),
    # every value would become 0 or subnormal: the picks would be arbitrary, with no error
    (
        "dtype-underflow",
        "select --embeddings {d}/tiny32.npy --dtype float32",
        ["--dtype float32 underflows --embeddings", "1e-45", "1.175e-38"],
        (),
    ),
    (
        "duals-no-labeled",
        "select --strategy ally --embeddings {d}/pool.npy --duals {d}/duals.npy",
        ["--duals gives one value per labeled row", "pass --labeled"],
        (),
    ),
    (
        "sparse-no-labels",
        "select --strategy sparse_approx --embeddings {d}/pool.npy --probs {d}/probs.npy",
        ["sparse_approx needs its label distribution", "--labels"],
        (),
    ),
    ("time-limit-coreset", f"{POOL} --time-limit 5", ["'coreset' takes no --time-limit"], ()),
    (
        "time-limit-zero",
        f"{POOL} --strategy robust_coreset --time-limit 0",
        ["--time-limit must be > 0"],
        (),
    ),
    (
        "time-limit-inf",
        f"{POOL} --strategy robust_coreset --time-limit inf",
        ["--time-limit must be > 0 seconds and finite, got inf"],
        (),
    ),
    ("empty-pool", "select --strategy random --probs {d}/empty_probs.npy", ["no rows"], ()),
    ("option-no-value", f"{POOL} --option group_size", ["--option takes NAME=VALUE"], ()),
    (
        "option-unknown",
        f"{POOL} --option gruop_size=4",
        ["'coreset' has no option 'gruop_size'", "its options: embedding, bias"],
        (),
    ),
    ("option-flagged", f"{POOL} --option prune=False", ["prune has its own flag: --no-prune"], ()),
    ("option-twice", f"{POOL} --option bias=1 --option bias=0", ["bias is given twice"], ()),
    ("option-bad-value", f"{POOL} --option embedding=pixels", ["coreset: embedding must be"], ()),
    # the default budget, rounded down to CRC's groups of 20, was raised to 20 past the pool
    (
        "crc-small-pool",
        "select --strategy crc --embeddings {d}/pool15.npy --probs {d}/probs15.npy",
        ["crc takes whole groups of 20 rows", "only 15 unlabeled"],
        (),
    ),
    ("demo-no-strategy", f"{DEMO} --strategies ,", ["no strategy named"], ()),
    ("demo-twice", f"{DEMO} --strategies random,random", ["named twice: random"], ()),
    ("demo-unknown", f"{DEMO} --strategies nope", ["fastal: unknown strategy"], ()),
    ("n-labeled-big", "select --n-labeled 2000", ["--n-labeled", "1797", "2000"], ()),
    ("n-labeled-neg", "select --n-labeled -1", ["--n-labeled", "-1"], ()),
    ("n-labeled-arrays", f"{POOL} --n-labeled 5", ["--n-labeled", "--labeled"], ()),
    (
        "both-labeled",
        "select --labeled {d}/lab0d.npy --n-labeled 5",
        ["--labeled and --n-labeled"],
        (),
    ),
    ("seed-neg", "select --seed -1", ["--seed", ">= 0", "-1"], ()),
    ("demo-seeds", f"{DEMO} --seeds 0", ["--seeds", ">= 1"], ()),
    ("demo-budget", f"{DEMO} --budget 0", ["--budget", ">= 1"], ()),
    ("demo-initial", f"{DEMO} --initial 0", ["--initial", ">= 1"], ()),
    ("demo-rounds", f"{DEMO} --rounds -1", ["--rounds", ">= 0"], ()),
    ("demo-steps", f"{DEMO} --steps 0", ["--steps", ">= 1"], ()),
    ("demo-threads", f"{DEMO} --threads -1", ["--threads", ">= 0"], ()),
    # torch.set_num_threads(100000) then a matmul: OpenBLAS failed pthread_create and segfaulted
    (
        "demo-threads-many",
        f"{DEMO} --threads 100000",
        ["--threads must be at most", "cores), got 100000"],
        (),
    ),
    ("demo-device", f"{DEMO} --device bogus", ["--device"], ()),
    ("demo-out-empty", f"{DEMO} --out ''", ["--out", "must name a folder"], ()),
    ("demo-out-file", f"{DEMO} --out {{d}}/afile", ["--out", "is a file"], ()),
    (
        "demo-out-under-file",
        f"{DEMO} --out {{d}}/afile/sub",
        ["--out", "cannot create the folder"],
        (),
    ),
    ("demo-out-proc", f"{DEMO} --out /proc/fastal-demo", ["--out", "cannot create"], PROC),
]


@pytest.mark.parametrize(
    ("command", "words"), [pytest.param(c, w, id=i, marks=m) for i, c, w, m in REFUSED]
)
def test_refusals_are_one_fastal_line(cli_files, command, words):
    argv = shlex.split(command.replace("{d}", shlex.quote(str(cli_files))))
    res = subprocess.run([sys.executable, "-m", "fastal", *argv], capture_output=True, text=True,
                         cwd=cli_files, check=False)  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fastal: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert res.stdout == ""  # refused before any loading, selection or training ran


def test_out_refused_before_the_selection_runs(cli_files, monkeypatch):
    def no_select(*args, **kwargs):
        raise AssertionError("the selection ran")

    monkeypatch.setattr(fastal.strategies.get("coreset"), "select", no_select)
    argv = ["select", "--embeddings", str(cli_files / "pool.npy"), "--budget", "3"]
    with pytest.raises(SystemExit, match=r"^fastal: --out .* does not exist"):
        cli.main([*argv, "--out", str(cli_files / "missing" / "o.npy")])


def test_out_write_failure_after_the_selection(cli_files, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "save_npy_atomic", full_disk)
    argv = ["select", "--embeddings", str(cli_files / "pool.npy"), "--budget", "3",
            "--out", str(cli_files / "o.npy")]  # fmt: skip
    with pytest.raises(SystemExit, match=r"^fastal: --out .*: cannot write: .*No space left"):
        cli.main(argv)
    assert not (cli_files / "o.npy").exists()


def test_labeled_file_is_used_with_the_digits_pool(tmp_path, capsys):
    X = cli._digits_pool(0, 0)[0]
    picks = {}
    for name, labeled in {"a": np.arange(5), "b": np.arange(0, 1797, 9)}.items():
        np.save(tmp_path / f"{name}.npy", labeled)
        out = tmp_path / f"picks_{name}.npy"
        argv = ["select", "--labeled", str(tmp_path / f"{name}.npy"), "--budget", "6",
                "--out", str(out)]  # fmt: skip
        assert cli.main(argv) == 0
        assert f"{len(labeled)} labeled, budget 6" in capsys.readouterr().out
        picks[name] = np.load(out)
        np.testing.assert_array_equal(picks[name], fastal.kcenter_greedy(X, 6, labeled=labeled))
    assert not np.array_equal(picks["a"], picks["b"])


def test_n_labeled_on_the_digits(capsys):
    assert cli.main(["select", "--n-labeled", "0", "--budget", "3"]) == 0
    assert "0 labeled, budget 3" in capsys.readouterr().out
    assert cli.main(["select", "--budget", "3"]) == 0  # the default: 20 random labels
    assert "20 labeled, budget 3" in capsys.readouterr().out


def test_the_digits_labeled_set_follows_the_seed(tmp_path, capsys):
    from sklearn.datasets import load_digits

    X = (load_digits().data / 16.0).astype(np.float32)
    for seed in (1, 2):
        out = tmp_path / f"picks{seed}.npy"
        assert cli.main(["select", "--seed", str(seed), "--budget", "5", "--out", str(out)]) == 0
        labeled = np.sort(np.random.default_rng(seed).choice(len(X), size=20, replace=False))
        want, radius = fastal.kcenter_greedy(X, 5, labeled=labeled, return_radius=True)
        assert_array_equal(np.load(out), want)
        # the pixels are scaled to [0, 1]: the printed radius is that of X, not of 0..16 pixels
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "covering radius" in ln)
        assert line.split("-> ")[1].split(" ")[0] == f"{float(radius[-1]):.4f}"


def test_robust_coreset_size_limit_names_the_command_line_way_out(tmp_path):
    """The size error's remedies (candidates=, max_points) are Python arguments the command line
    lacks: the CLI adds what to do from it."""
    np.save(tmp_path / "pool.npy", np.zeros((2001, 2), np.float32))
    argv = ["select", "--strategy", "robust_coreset", "--embeddings", str(tmp_path / "pool.npy"),
            "--budget", "3"]  # fmt: skip
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    message = str(err.value)
    assert "too large for robust_kcenter" in message
    assert "--option max_points=N, or --strategy coreset" in message
    assert "RobustKCenter(candidates=" in message


def test_option_sets_the_strategys_constructor_arguments(tmp_path, capsys):
    """--option NAME=VALUE (a Python literal or a word): the CLI had no way to set CRC's group
    size (its budget had to be a multiple of 20), BADGE's bias, a solver..."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "f.npy", rng.normal(size=(60, 4)))
    np.save(tmp_path / "p.npy", rng.dirichlet(np.ones(3), 60))
    pool = ["select", "--embeddings", str(tmp_path / "f.npy"), "--probs", str(tmp_path / "p.npy")]
    out = str(tmp_path / "picks.npy")
    options = ["--option", "group_size=5", "--option", "zeros=skip"]
    argv = [*pool, "--strategy", "crc", *options, "--budget", "10", "--seed", "2", "--out", out]
    assert cli.main(argv) == 0
    want = fastal.strategies.CRC(group_size=5, zeros="skip").select(
        {"features": np.load(tmp_path / "f.npy"), "probs": np.load(tmp_path / "p.npy")}, 10, seed=2
    )
    assert_array_equal(np.load(out), want.indices)
    assert cli.main([*pool, "--strategy", "crc", "--option", "group_size=7"]) == 0  # 56 of 60
    assert "budget 56" in capsys.readouterr().out


def test_the_array_checks_read_the_strategy_the_options_make(tmp_path, capsys):
    """--option temperature=2.0 gives sparse_approx its P (it was refused for want of --labels);
    --option embedding=gradients makes coreset read --probs (it was 'would ignore --probs')."""
    rng = np.random.default_rng(1)
    X, P = rng.normal(size=(60, 4)), rng.dirichlet(np.ones(3), 60)
    for name, a in (("f", X), ("p", P), ("z", np.log(P))):
        np.save(tmp_path / f"{name}.npy", a)
    out = str(tmp_path / "picks.npy")
    feats = ["--features", str(tmp_path / "f.npy")]
    argv = ["select", "--strategy", "sparse_approx", *feats, "--logits", str(tmp_path / "z.npy"),
            "--option", "temperature=2.0", "--budget", "4", "--out", out]  # fmt: skip
    assert cli.main(argv) == 0
    want = fastal.strategies.SparseApprox(temperature=2.0).select(
        {"features": X, "logits": np.log(P)}, 4
    )
    assert_array_equal(np.load(out), want.indices)
    argv = ["select", "--strategy", "coreset", *feats, "--probs", str(tmp_path / "p.npy"),
            "--option", "embedding=gradients", "--budget", "4", "--out", out]  # fmt: skip
    assert cli.main(argv) == 0
    want = fastal.strategies.CoreSet(embedding="gradients").select(
        {"features": X, "probs": P}, 4, seed=0
    )
    assert_array_equal(np.load(out), want.indices)
    with pytest.raises(SystemExit, match="'coreset' needs probs"):
        cli.main(["select", "--strategy", "coreset", *feats, "--option", "embedding=gradients"])
    capsys.readouterr()


def test_messages_about_the_features_name_the_option_typed(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((50, 3)))
    np.save(tmp_path / "p.npy", np.full((60, 3), 1 / 3))
    np.save(tmp_path / "p50.npy", np.full((50, 3), 1 / 3))
    bad = np.ones((20, 3))
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    feats, probs = str(tmp_path / "f.npy"), str(tmp_path / "p.npy")
    with pytest.raises(SystemExit, match="disagree on the number of rows: --features 50, --probs"):
        cli.main(["select", "--strategy", "badge", "--features", feats, "--probs", probs])
    with pytest.raises(SystemExit, match=r"would ignore --probs"):
        cli.main(["select", "--features", feats, "--probs", str(tmp_path / "p50.npy")])
    with pytest.raises(SystemExit, match=r"first at row 3$"):  # no "(features is the --features"
        cli.main(["select", "--features", str(tmp_path / "nan.npy"), "--budget", "2"])
    with pytest.raises(SystemExit, match=r"first at row 3 \(features is the --embeddings array\)"):
        cli.main(["select", "--embeddings", str(tmp_path / "nan.npy"), "--budget", "2"])


def test_badge_no_prune_reaches_the_seeding(tmp_path, capsys):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "f.npy", rng.normal(size=(300, 4)).astype(np.float32))
    np.save(tmp_path / "p.npy", rng.dirichlet(np.ones(3), 300).astype(np.float32))
    files = ["--embeddings", str(tmp_path / "f.npy"), "--probs", str(tmp_path / "p.npy")]
    out = ["--out", str(tmp_path / "o.npy")]
    args = ["select", "--strategy", "badge", *files, "--budget", "10", *out]
    assert cli.main(args) == 0
    pruned = np.load(tmp_path / "o.npy")
    assert cli.main([*args, "--no-prune"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), pruned)  # the draws do not change
    sel = fastal.strategies.BADGE(prune=False).select(
        {"features": np.load(tmp_path / "f.npy"), "probs": np.load(tmp_path / "p.npy")}, 10, seed=0
    )
    assert sel.diagnostics["pruned"] is False
    capsys.readouterr()


def test_coreset_gradients_random_baseline_is_in_the_gradient_space(tmp_path, capsys):
    """The baseline radius was measured on the features while the strategy covers the gradient
    embedding: it could exceed the labeled-only radius, which one space cannot do."""
    rng = np.random.default_rng(2)
    f, p = rng.normal(size=(400, 8)).astype(np.float32), rng.dirichlet(np.ones(5), 400)
    np.save(tmp_path / "f.npy", f)
    np.save(tmp_path / "p.npy", p.astype(np.float32))
    np.save(tmp_path / "lab.npy", np.arange(20))
    files = ["--embeddings", str(tmp_path / "f.npy"), "--probs", str(tmp_path / "p.npy")]
    labeled = ["--labeled", str(tmp_path / "lab.npy")]
    args = ["select", "--strategy", "coreset_gradients", *files, *labeled, "--budget", "20"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    initial = float(out.split("covering radius: ")[1].split(" ")[0])
    random_radius = float(out.split("picked at random: radius ")[1].split()[0])
    emb = fastal.gradient_embedding(p.astype(np.float32), f)
    rand = np.random.default_rng(0).choice(np.arange(20, 400), size=20, replace=False)
    dist, _ = fastal.min_distance(emb, emb.subset(np.concatenate([np.arange(20), rand])))
    assert random_radius == pytest.approx(float(np.max(dist)), rel=1e-4)
    assert random_radius <= initial


@pytest.mark.parametrize("name", cli._TORCH_FREE)
def test_torch_free_strategies_do_not_import_torch(name):
    """The CLI imports torch before its timer except for these (its ~1 s import was timed)."""
    code = (
        "import sys, numpy as np; from fastal import strategies; "
        "X = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32); "
        f"cls = strategies.get({name!r}); pool = X if cls.requires else {{'n': 60}}; "
        "cls().select(pool, 3, [0, 1], seed=0); print('torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


@pytest.mark.parametrize("name", ["kmeans", "ally"])
def test_no_prune_reaches_the_k_means_of_kmeans_and_ally(name):
    """The Lloyd bounds are exact: the picks do not change, and --no-prune is honoured."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    pool = {"features": X, "dual_predictions": rng.random(200)} if name == "ally" else X
    cls = fastal.strategies.get(name)
    picks = [cls(prune=p).select(pool, 40, seed=1).indices.tolist() for p in (True, False)]
    assert picks[0] == picks[1]
    args = cli.build_parser().parse_args(["select", "--no-prune"])
    assert cli._strategy_kwargs(cls, args)["prune"] is False


def test_out_writes_through_a_symlink_and_keeps_the_mode(cli_files):
    """The rename replaced the link itself (and would replace a device as root)."""
    target, link = cli_files / "target.npy", cli_files / "link.npy"
    np.save(target, np.zeros(1))
    target.chmod(0o600)
    link.symlink_to(target)
    argv = ["select", "--embeddings", str(cli_files / "pool.npy"), "--budget", "3"]
    assert cli.main([*argv, "--out", str(link)]) == 0
    assert link.is_symlink()
    assert np.load(target).shape == (3,)
    assert target.stat().st_mode & 0o777 == 0o600


def test_pools_are_mapped_not_read(cli_files):
    pool = cli._load_npy(str(cli_files / "pool.npy"), "--embeddings")
    assert isinstance(pool, np.memmap)
    np.testing.assert_array_equal(pool, np.load(cli_files / "pool.npy"))


def test_report_runs_in_the_selected_precision(tmp_path, capsys):
    """--dtype float64 saved a float32 pool that overflows float32; the report still computed
    its random baseline in float32 and failed after the picks were written."""
    X = np.zeros((10, 4), np.float32)
    X[0] = 2e19
    np.save(tmp_path / "ovf.npy", X)
    argv = ["select", "--embeddings", str(tmp_path / "ovf.npy"), "--budget", "3", "--dtype",
            "float64", "--out", str(tmp_path / "p.npy")]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "same budget picked at random: radius " in out
    assert "not computed" not in out
    assert "covering radius: none (nothing labeled)" in out


def test_summary_names_options_and_real_dtypes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "f.npy", rng.normal(size=(60, 4)).astype(np.float32))
    np.save(tmp_path / "z.npy", rng.normal(size=(60, 3)).astype(np.float32))
    np.save(tmp_path / "lab.npy", np.arange(6))
    np.save(tmp_path / "y.npy", np.arange(6) % 3)
    argv = ["select", "--strategy", "bilevel", "--embeddings", str(tmp_path / "f.npy"), "--logits",
            str(tmp_path / "z.npy"), "--labeled", str(tmp_path / "lab.npy"), "--labels",
            str(tmp_path / "y.npy"), "--budget", "3", "--dtype", "float16"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "labeled_targets 6 (int64)" in out
    assert "features 60x4 (float16)" in out
    assert "labeled_logits" not in out
    assert "--labels " in out.splitlines()[0]


def test_interrupt_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_select", interrupted)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_select(parser(), interrupted))
    assert cli.main(["select"]) == 130
    assert capsys.readouterr().err == "fastal: interrupted\n"


def _with_select(parser, func):
    for action in parser._subparsers._group_actions:
        action.choices["select"].set_defaults(func=func)
    return parser


def test_demo_piped_into_head_still_writes_its_files(tmp_path):
    """The first progress line raised BrokenPipeError and the demo stopped, exit 0, no files."""
    code = ("import os, sys; r, w = os.pipe(); os.close(r); os.dup2(w, 1); from fastal import cli; "
            "sys.exit(cli.main(sys.argv[1:]))")  # fmt: skip
    argv = ["demo", "--quick", "--strategies", "random", "--rounds", "1", "--out", str(tmp_path)]
    res = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert (tmp_path / "results.csv").exists()


def test_version_and_no_abbreviations(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("fastal ")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["select", "--emb", "x.npy"])
    assert exit_info.value.code == 2


def test_robust_coreset_reports_its_certificate(tmp_path, capsys):
    np.save(tmp_path / "f.npy", np.random.default_rng(0).normal(size=(40, 2)).astype(np.float32))
    argv = ["select", "--strategy", "robust_coreset", "--embeddings", str(tmp_path / "f.npy"),
            "--budget", "3", "--time-limit", "60"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "robust radius:" in capsys.readouterr().out


def test_probabilities_message_names_the_logits_option(tmp_path):
    np.save(tmp_path / "p.npy", np.full((20, 3), 2 / 3, np.float32))
    argv = ["select", "--strategy", "entropy", "--probs", str(tmp_path / "p.npy"), "--budget", "2"]
    with pytest.raises(SystemExit, match="pass them as --logits"):
        cli.main(argv)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_random_baseline_radius_is_taken_on_the_rounded_pool(tmp_path, capsys, dtype):
    """With --dtype bfloat16 the selection ran on rounded values but the report's random
    baseline was measured on the float32 file: not the same space (bfloat16 moves ~0.4 %)."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    np.save(tmp_path / "pool.npy", X)
    np.save(tmp_path / "lab.npy", np.array([0, 1]))
    argv = ["select", "--embeddings", str(tmp_path / "pool.npy"), "--dtype", dtype,
            "--labeled", str(tmp_path / "lab.npy"), "--budget", "5", "--seed", "0"]  # fmt: skip
    assert cli.main(argv) == 0
    got = float(capsys.readouterr().out.split("picked at random: radius ")[1].split()[0])
    rounded = torch.from_numpy(X).to(getattr(torch, dtype)).double().numpy()
    rand = np.random.default_rng(0).choice(np.arange(2, 60), size=5, replace=False)
    centres = rounded[np.r_[[0, 1], rand]]
    d = np.sqrt(((rounded[:, None, :] - centres[None]) ** 2).sum(-1)).min(1)
    assert got == pytest.approx(float(d.max()), rel=2e-5)


def test_dtype_overflow_is_found_beside_masked_classes(tmp_path):
    """-inf logits (masked classes) made the largest magnitude inf, which skipped the overflow
    check: -7e4 became a float16 -inf, a masked class, silently."""
    z = np.random.default_rng(0).normal(size=(30, 3))
    z[:, 2] = -np.inf
    z[5, 0] = -7e4
    np.save(tmp_path / "l.npy", z)
    argv = ["select", "--strategy", "entropy", "--logits", str(tmp_path / "l.npy"),
            "--budget", "3", "--dtype", "float16"]  # fmt: skip
    with pytest.raises(SystemExit, match="--dtype float16 overflows --logits"):
        cli.main(argv)
    z[5, 0] = -7.0
    np.save(tmp_path / "l.npy", z)
    assert cli.main(argv) == 0
