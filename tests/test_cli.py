"""The `fastal` command line: default run on the bundled digits, `select` with .npy files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fastal
from fastal import cli


def test_default_run_on_bundled_digits(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "digits" in out
    assert "covering radius" in out
    assert "classes among the picks" in out


def test_select_writes_the_same_picks_as_the_api(tmp_path, capsys):
    X = np.random.default_rng(0).normal(size=(300, 6)).astype(np.float32)
    labeled = np.array([3, 17, 42], dtype=np.int64)
    np.save(tmp_path / "pool.npy", X)
    np.save(tmp_path / "labeled.npy", labeled)
    out = tmp_path / "picks.npy"
    argv = ["select", "--strategy", "coreset", "--embeddings", str(tmp_path / "pool.npy"),
            "--labeled", str(tmp_path / "labeled.npy"), "--budget", "25", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    picks = np.load(out, allow_pickle=False)
    assert picks.dtype == np.int64
    np.testing.assert_array_equal(picks, fastal.kcenter_greedy(X, 25, labeled=labeled))
    assert "wrote 25 indices" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


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
    with pytest.raises(SystemExit, match="cannot read embeddings"):
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


def test_console_script_module_entry():
    res = subprocess.run([sys.executable, "-m", "fastal", "--help"], capture_output=True, text=True,
                         check=False)  # fmt: skip
    assert res.returncode == 0
    assert "select" in res.stdout
