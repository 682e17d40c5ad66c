"""Type stubs for fastal._cpu (C++/OpenMP kernels; see csrc/bindings/cpu_*.cpp).

Generated from the pybind11 signatures; a dense pool is passed as ``(X,)`` and a factored one as
``(A, H, sqnorm, bias)`` (``bias``: H's trailing 1 is implicit) where a parameter is typed
``tuple``."""

from typing import Any

import numpy as np
from numpy.typing import NDArray

def count_nonfinite_rows_bfloat16(X: NDArray[np.uint16]) -> tuple[int, int, float]: ...
def count_nonfinite_rows_float16(X: NDArray[np.uint16]) -> tuple[int, int, float]: ...
def count_nonfinite_rows_float32(X: NDArray[np.float32]) -> tuple[int, int, float]: ...
def count_nonfinite_rows_float64(X: NDArray[np.float64]) -> tuple[int, int, float]: ...
def factored_adjoint_bfloat16(
    A: NDArray[np.float32],
    H: NDArray[np.uint16],
    R: NDArray[np.float64],
    scale: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_adjoint_float16(
    A: NDArray[np.float32],
    H: NDArray[np.uint16],
    R: NDArray[np.float64],
    scale: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_adjoint_float32(
    A: NDArray[np.float32],
    H: NDArray[np.float32],
    R: NDArray[np.float64],
    scale: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_adjoint_float64(
    A: NDArray[np.float64],
    H: NDArray[np.float64],
    R: NDArray[np.float64],
    scale: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_apply_bfloat16(
    A: NDArray[np.float32],
    H: NDArray[np.uint16],
    u: NDArray[np.float64],
    scale: float,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_apply_float16(
    A: NDArray[np.float32],
    H: NDArray[np.uint16],
    u: NDArray[np.float64],
    scale: float,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_apply_float32(
    A: NDArray[np.float32],
    H: NDArray[np.float32],
    u: NDArray[np.float64],
    scale: float,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_apply_float64(
    A: NDArray[np.float64],
    H: NDArray[np.float64],
    u: NDArray[np.float64],
    scale: float,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> NDArray[np.float64]: ...
def factored_grad_apply_bfloat16(
    A: NDArray[np.float32],
    H: NDArray[np.uint16],
    R: NDArray[np.float64],
    scale: float,
    z: NDArray[np.float64],
    beta: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def factored_grad_apply_float16(
    A: NDArray[np.float32],
    H: NDArray[np.uint16],
    R: NDArray[np.float64],
    scale: float,
    z: NDArray[np.float64],
    beta: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def factored_grad_apply_float32(
    A: NDArray[np.float32],
    H: NDArray[np.float32],
    R: NDArray[np.float64],
    scale: float,
    z: NDArray[np.float64],
    beta: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def factored_grad_apply_float64(
    A: NDArray[np.float64],
    H: NDArray[np.float64],
    R: NDArray[np.float64],
    scale: float,
    z: NDArray[np.float64],
    beta: float,
    rows: NDArray[np.int64] | None = None,
    hrows: NDArray[np.int64] | None = None,
    bias: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]: ...
def gram_min_eig_float32(
    Z: NDArray[np.float32],
    labeled: NDArray[np.int64],
    groups: NDArray[np.int64],
    rtol: float,
    return_all: bool = False,
) -> Any: ...
def gram_min_eig_float64(
    Z: NDArray[np.float64],
    labeled: NDArray[np.int64],
    groups: NDArray[np.int64],
    rtol: float,
    return_all: bool = False,
) -> Any: ...

# the CUDA kernel's one-thread-per-matrix path (orders <= 32) built for the host: tests only
def gram_min_eig_small_float32(
    Z: NDArray[np.float32],
    labeled: NDArray[np.int64],
    groups: NDArray[np.int64],
    rtol: float,
    return_all: bool = False,
    slots: int = 64,
) -> Any: ...
def gram_min_eig_small_float64(
    Z: NDArray[np.float64],
    labeled: NDArray[np.int64],
    groups: NDArray[np.int64],
    rtol: float,
    return_all: bool = False,
    slots: int = 64,
) -> Any: ...
def iht_threshold_fused_float32(
    s: NDArray[np.float32],
    sigma: NDArray[np.float32],
    b: int,
    alpha: float,
    exact: bool = False,
    grid: int = 1,
) -> Any: ...
def gram_min_eig_warp_float32(
    Z: NDArray[np.float32],
    labeled: NDArray[np.int64],
    groups: NDArray[np.int64],
    rtol: float,
    return_all: bool = False,
) -> Any: ...
def gram_min_eig_warp_float64(
    Z: NDArray[np.float64],
    labeled: NDArray[np.int64],
    groups: NDArray[np.int64],
    rtol: float,
    return_all: bool = False,
) -> Any: ...
def gram_groups_valid(
    groups: NDArray[np.int64], n: int, labeled_sorted: NDArray[np.int64]
) -> NDArray[np.bool_]: ...
def gram_min_eig_lowrank_float32(
    Z: NDArray[np.float32],
    groups: NDArray[np.int64],
    basis: NDArray[np.float64],
    lam: NDArray[np.float64],
    s_side: bool,
    rtol: float,
) -> NDArray[np.float64]: ...
def gram_min_eig_lowrank_float64(
    Z: NDArray[np.float64],
    groups: NDArray[np.int64],
    basis: NDArray[np.float64],
    lam: NDArray[np.float64],
    s_side: bool,
    rtol: float,
) -> NDArray[np.float64]: ...
def iht_threshold_float32(
    s: NDArray[np.float32], sigma: NDArray[np.float32], b: int, alpha: float, exact: bool = False
) -> tuple[NDArray[np.int64], NDArray[np.float32]]: ...
def iht_threshold_float64(
    s: NDArray[np.float64], sigma: NDArray[np.float64], b: int, alpha: float, exact: bool = False
) -> tuple[NDArray[np.int64], NDArray[np.float64]]: ...
def indexed_distances_float64(
    X: NDArray[np.float64],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    nearest_only: bool = False,
) -> NDArray[np.float64]: ...
def in_forked_child() -> bool: ...
def kcenter_init_first_bfloat16(
    pool: tuple,
    first: int,
    mind: NDArray[np.float32],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    picks: NDArray[np.int64],
    radius2: NDArray[np.float32],
) -> None: ...
def kcenter_init_first_float16(
    pool: tuple,
    first: int,
    mind: NDArray[np.float32],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    picks: NDArray[np.int64],
    radius2: NDArray[np.float32],
) -> None: ...
def kcenter_init_first_float32(
    pool: tuple,
    first: int,
    mind: NDArray[np.float32],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    picks: NDArray[np.int64],
    radius2: NDArray[np.float32],
) -> None: ...
def kcenter_init_first_float64(
    pool: tuple,
    first: int,
    mind: NDArray[np.float64],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    picks: NDArray[np.int64],
    radius2: NDArray[np.float64],
) -> None: ...
def kcenter_steps_bfloat16(
    pool: tuple,
    mind: NDArray[np.float32],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    n_labeled: int,
    picks: NDArray[np.int64],
    radius2: NDArray[np.float32],
    prune: bool,
    t_begin: int,
    t_end: int,
) -> int: ...
def kcenter_steps_float16(
    pool: tuple,
    mind: NDArray[np.float32],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    n_labeled: int,
    picks: NDArray[np.int64],
    radius2: NDArray[np.float32],
    prune: bool,
    t_begin: int,
    t_end: int,
) -> int: ...
def kcenter_steps_float32(
    pool: tuple,
    mind: NDArray[np.float32],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    n_labeled: int,
    picks: NDArray[np.int64],
    radius2: NDArray[np.float32],
    prune: bool,
    t_begin: int,
    t_end: int,
) -> int: ...
def kcenter_steps_float64(
    pool: tuple,
    mind: NDArray[np.float64],
    near: NDArray[np.int64],
    centres: NDArray[np.int64],
    n_labeled: int,
    picks: NDArray[np.int64],
    radius2: NDArray[np.float64],
    prune: bool,
    t_begin: int,
    t_end: int,
) -> int: ...

kmeanspp_block: int

def kmeans_lloyd_bounded_step_bfloat16(
    X: NDArray[np.uint16],
    xsq: NDArray[np.float32],
    centres: NDArray[np.float32],
    shift: NDArray[np.float64],
    group: NDArray[np.int32],
    n_groups: int,
    fresh: bool,
    labels: NDArray[np.int64],
    upper: NDArray[np.float32],
    glower: NDArray[np.float32],
    lower: NDArray[np.float32],
    offset: NDArray[np.float64],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
) -> tuple[NDArray[np.float64], NDArray[np.int64], int]: ...
def kmeans_lloyd_step_bfloat16(
    X: NDArray[np.uint16],
    xsq: NDArray[np.float32],
    centres: NDArray[np.float32],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
    margin: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64], NDArray[np.int64]]: ...
def kmeans_lloyd_bounded_step_float16(
    X: NDArray[np.uint16],
    xsq: NDArray[np.float32],
    centres: NDArray[np.float32],
    shift: NDArray[np.float64],
    group: NDArray[np.int32],
    n_groups: int,
    fresh: bool,
    labels: NDArray[np.int64],
    upper: NDArray[np.float32],
    glower: NDArray[np.float32],
    lower: NDArray[np.float32],
    offset: NDArray[np.float64],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
) -> tuple[NDArray[np.float64], NDArray[np.int64], int]: ...
def kmeans_lloyd_step_float16(
    X: NDArray[np.uint16],
    xsq: NDArray[np.float32],
    centres: NDArray[np.float32],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
    margin: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64], NDArray[np.int64]]: ...
def kmeans_lloyd_step_float32(
    X: NDArray[np.float32],
    xsq: NDArray[np.float32],
    centres: NDArray[np.float32],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
    margin: NDArray[np.float32] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.float64], NDArray[np.int64]]: ...
def kmeans_lloyd_bounded_step_float32(
    X: NDArray[np.float32],
    xsq: NDArray[np.float32],
    centres: NDArray[np.float32],
    shift: NDArray[np.float64],
    group: NDArray[np.int32],
    n_groups: int,
    fresh: bool,
    labels: NDArray[np.int64],
    upper: NDArray[np.float32],
    glower: NDArray[np.float32],
    lower: NDArray[np.float32],
    offset: NDArray[np.float64],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
) -> tuple[NDArray[np.float64], NDArray[np.int64], int]: ...
def kmeans_lloyd_step_float64(
    X: NDArray[np.float64],
    xsq: NDArray[np.float64],
    centres: NDArray[np.float64],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
    margin: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64], NDArray[np.int64]]: ...
def kmeans_lloyd_bounded_step_float64(
    X: NDArray[np.float64],
    xsq: NDArray[np.float64],
    centres: NDArray[np.float64],
    shift: NDArray[np.float64],
    group: NDArray[np.int32],
    n_groups: int,
    fresh: bool,
    labels: NDArray[np.int64],
    upper: NDArray[np.float32],
    glower: NDArray[np.float32],
    lower: NDArray[np.float32],
    offset: NDArray[np.float64],
    gemm_address: int,
    threads_local_address: int = 0,
    partial_limit: int = -1,
) -> tuple[NDArray[np.float64], NDArray[np.int64], int]: ...
def kmeanspp_init_bfloat16(
    pool: tuple,
    labeled: NDArray[np.int64],
    first: int,
    mind: NDArray[np.float32],
    picks: NDArray[np.int64],
    block_sums: NDArray[np.float64],
) -> None: ...
def kmeanspp_init_float16(
    pool: tuple,
    labeled: NDArray[np.int64],
    first: int,
    mind: NDArray[np.float32],
    picks: NDArray[np.int64],
    block_sums: NDArray[np.float64],
) -> None: ...
def kmeanspp_init_float32(
    pool: tuple,
    labeled: NDArray[np.int64],
    first: int,
    mind: NDArray[np.float32],
    picks: NDArray[np.int64],
    block_sums: NDArray[np.float64],
) -> None: ...
def kmeanspp_init_float64(
    pool: tuple,
    labeled: NDArray[np.int64],
    first: int,
    mind: NDArray[np.float64],
    picks: NDArray[np.int64],
    block_sums: NDArray[np.float64],
) -> None: ...
def kmeanspp_steps_bfloat16(
    pool: tuple,
    mind: NDArray[np.float32],
    picks: NDArray[np.int64],
    uniform: NDArray[np.float64],
    block_sums: NDArray[np.float64],
    has_first: bool,
    t_begin: int,
    t_end: int,
    near: NDArray[np.int64] | None = None,
    centres: NDArray[np.int64] | None = None,
    n_labeled: int = 0,
) -> int: ...
def kmeanspp_steps_float16(
    pool: tuple,
    mind: NDArray[np.float32],
    picks: NDArray[np.int64],
    uniform: NDArray[np.float64],
    block_sums: NDArray[np.float64],
    has_first: bool,
    t_begin: int,
    t_end: int,
    near: NDArray[np.int64] | None = None,
    centres: NDArray[np.int64] | None = None,
    n_labeled: int = 0,
) -> int: ...
def kmeanspp_steps_float32(
    pool: tuple,
    mind: NDArray[np.float32],
    picks: NDArray[np.int64],
    uniform: NDArray[np.float64],
    block_sums: NDArray[np.float64],
    has_first: bool,
    t_begin: int,
    t_end: int,
    near: NDArray[np.int64] | None = None,
    centres: NDArray[np.int64] | None = None,
    n_labeled: int = 0,
) -> int: ...
def kmeanspp_steps_float64(
    pool: tuple,
    mind: NDArray[np.float64],
    picks: NDArray[np.int64],
    uniform: NDArray[np.float64],
    block_sums: NDArray[np.float64],
    has_first: bool,
    t_begin: int,
    t_end: int,
    near: NDArray[np.int64] | None = None,
    centres: NDArray[np.int64] | None = None,
    n_labeled: int = 0,
) -> int: ...
def min_sqdist_to_centres_bfloat16(
    X: NDArray[np.uint16], centres: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def min_sqdist_to_centres_float16(
    X: NDArray[np.uint16], centres: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def min_sqdist_to_centres_float32(
    X: NDArray[np.float32], centres: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def min_sqdist_to_centres_float64(
    X: NDArray[np.float64], centres: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
def min_sqdist_to_set_bfloat16(
    pool: tuple, set: tuple
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def min_sqdist_to_set_float16(
    pool: tuple, set: tuple
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def min_sqdist_to_set_float32(
    pool: tuple, set: tuple
) -> tuple[NDArray[np.float32], NDArray[np.int64]]: ...
def min_sqdist_to_set_float64(
    pool: tuple, set: tuple
) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
def num_threads() -> int: ...
def parallel_sum(x: NDArray[np.float32]) -> float: ...
def segment_sum_bfloat16(
    X: NDArray[np.uint16], labels: NDArray[np.int64], k: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
def segment_sum_float16(
    X: NDArray[np.uint16], labels: NDArray[np.int64], k: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
def segment_sum_float32(
    X: NDArray[np.float32], labels: NDArray[np.int64], k: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
def segment_sum_float64(
    X: NDArray[np.float64], labels: NDArray[np.int64], k: int
) -> tuple[NDArray[np.float64], NDArray[np.int64]]: ...
