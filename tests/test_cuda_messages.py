"""The CUDA module's argument errors carry their numbers (no GPU needed: these checks run before
any device call). On an H200 machine such messages once segfaulted the interpreter when they were
built with iostreams; csrc/common/check.h now formats them with std::to_string and snprintf."""

from __future__ import annotations

import re

import pytest

import fastal


@pytest.fixture
def cuda():
    if fastal._ext.cuda is None:
        pytest.skip("fastal was built without its CUDA module")
    return fastal._ext.cuda


def gram_args(**change):
    args = dict(
        dtype="float64", z_ptr=4096, n=20, d=17, labeled_ptr=8192, n_labeled=3, groups_ptr=12288,
        n_groups=3, G=5, rtol=1e-12, min_eig_ptr=16384, spectra_ptr=0, device=0, stream=0,
    )  # fmt: skip
    args.update(change)
    return args


def _exactly(message):
    """A match pattern for this whole message and nothing else."""
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(rtol=-1.0), "rtol must be in [0, 1), got -1"),
        (dict(rtol=0.25 + 1.0), "rtol must be in [0, 1), got 1.25"),
        (dict(rtol=float("nan")), "rtol must be in [0, 1), got nan"),
        (dict(G=0), "G must be >= 1, got 0"),
        (dict(n_labeled=-1), "n_labeled must be in [0, n = 20], got -1"),
        (dict(n=0), "n must be >= 1, got 0"),
        (dict(n=2**33), "n must be < 2^32, got 8589934592"),
    ],
)
def test_gram_messages_format_numbers(cuda, change, message):
    with pytest.raises(ValueError, match=_exactly(message)):
        cuda.gram_min_eig(**gram_args(**change))


def test_top_b_messages_format_numbers(cuda):
    with pytest.raises(ValueError, match=_exactly("b must be in [0, n = 10], got 11")):
        cuda.iht_threshold(4096, 4096, 10, 11, 0.1, 8192, 4096, 0, 0)
    with pytest.raises(ValueError, match=_exactly("alpha must be finite and >= 0, got -0.5")):
        cuda.iht_threshold(4096, 4096, 10, 2, -0.5, 8192, 4096, 0, 0)
    with pytest.raises(
        ValueError, match=_exactly("impl must be -1 (default), 0 (launches) or 1 (fused), got 2")
    ):
        cuda.iht_threshold(4096, 4096, 10, 2, 0.5, 8192, 4096, 0, 0, impl=2)
