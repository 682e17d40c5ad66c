"""README's Python examples run as written, against the installed package.

Each ```python block of README.md runs in order in one namespace, as a reader pasting them into
one session would. What a block leaves to the reader (their model ``MyNet``, their datasets, an
array such as ``mc`` or ``s``, or a ``pool``/``X``/``emb`` that means something else there than in
an earlier block) comes from BLOCK_SETUP, keyed by a line of the block and run just before it.
Sizes are scaled down (100_000 rows -> SCALED_N) to
keep CI short; a line whose call is elided with ``...`` is illustration and is skipped; without
a GPU, ``device="cuda"`` becomes the CPU and the block that moves a tensor to the GPU is skipped.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

README = Path(__file__).resolve().parent.parent / "README.md"
SCALED_N = "30_000"

# Preludes run before the block that contains the key line: the reader's own objects.
BLOCK_SETUP = {
    "ally = ALLY(trainer=PrimalDualTrainer(": """
        class MyNet(torch.nn.Sequential):
            def __init__(self):
                super().__init__(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                 torch.nn.Linear(32, 10))
        _x = torch.randn(600, 64)
        _y = torch.randint(0, 10, (600,))
        labeled_idx = np.arange(40)
        labeled_dataset = torch.utils.data.TensorDataset(_x[:40], _y[:40])
        pool = _x
        emb = rng.normal(size=(600, 16)).astype(np.float32)
        lam = rng.random(40).astype(np.float32)
        lam_hat = rng.random(600).astype(np.float32)
        per_sample_losses = torch.rand(8, requires_grad=True)
        batch_positions = torch.arange(8)
        all_per_sample_losses = torch.rand(40)
    """,
    "x_new, trace = maximize_dual(": """
        x_start = torch.randn(5, 64)
    """,
    'pool = {"logits": logits, "features": feats, "labeled_targets": y_labeled}': """
        logits, feats = logits[:1500], feats[:1500, :64]
        X, Y = feats[:200], feats[200:300]
        y_labeled = rng.integers(0, 10, len(labeled_idx))
    """,
    "res = loop.run((X_pool, y_pool), (X_test, y_test)": """
        from sklearn.datasets import load_digits
        _d = load_digits()
        _X = torch.tensor(_d.data[:, :64] / 16.0, dtype=torch.float32)
        _Y = torch.tensor(_d.target)
        X_pool, y_pool, X_test, y_test = _X[:400], _Y[:400], _X[400:600], _Y[400:600]
    """,
}
# Blocks that need a GPU whatever the device substitution (they move a tensor there themselves).
NEEDS_GPU = ['Xt = torch.from_numpy(X).to("cuda", torch.float16)']
ELIDED_CALL = re.compile(r"\(\.\.\.[,)]")


def readme_blocks() -> list[tuple[int, str]]:
    text = README.read_text()
    return [
        (text[: m.start()].count("\n") + 2, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, re.S)
    ]


def runnable(code: str, cuda: bool) -> str:
    code = code.replace("100_000", SCALED_N)
    if not cuda:
        code = code.replace('device="cuda"', 'device="cpu"')
    return "\n".join(line for line in code.splitlines() if not ELIDED_CALL.search(line))


def test_every_setup_key_names_a_readme_line():
    """A README edit that drops a key line would silently skip its setup: fail instead."""
    code = "\n".join(c for _, c in readme_blocks())
    assert [k for k in [*BLOCK_SETUP, *NEEDS_GPU] if k not in code] == []


def test_elided_calls_are_the_only_lines_dropped():
    assert runnable("a = f(...)\nloop.run(..., x=1)\nb = 2", cuda=False) == "b = 2"


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch):
    import fastal

    monkeypatch.chdir(tmp_path)  # the loop example writes run.npz and curve.csv
    cuda = fastal.cuda_available()
    namespace: dict = {}
    ran = 0
    for line, code in readme_blocks():
        if not cuda and any(k in code for k in NEEDS_GPU):
            continue
        for key, setup in BLOCK_SETUP.items():
            if key in code:
                prelude = "import numpy as np\nimport torch\n" + textwrap.dedent(setup)
                exec(compile(prelude, f"setup of README.md:{line}", "exec"), namespace)
        try:
            exec(compile(runnable(code, cuda), f"README.md:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"README.md block at line {line} failed: {e!r}") from e
        ran += 1
    assert ran >= 11
