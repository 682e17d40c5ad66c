"""Type stubs for fastal._cuda (see csrc/bindings/cuda_module.cpp and csrc/cuda/kernels.h).

Device arrays cross as raw pointers (``*_ptr``: Python ints from ``tensor.data_ptr()`` or
``cupy_array.data.ptr``), streams as raw handles (0: the default stream), storage dtypes as
``"float32" | "float16" | "bfloat16"`` (``"float32" | "float64"`` for the Gram kernels). Invalid
sizes or pointers raise ``ValueError`` naming the argument; CUDA failures raise ``RuntimeError``.
Everything but ``count_nonfinite_rows``, ``gram_scan``, ``iht_threshold`` and ``synchronize`` is
asynchronous on ``stream``.
"""

def device_count() -> int: ...
def synchronize(device: int, stream: int) -> None: ...
def key_value(key: int) -> float: ...
def count_nonfinite_rows(
    dtype: str, x_ptr: int, n: int, d: int, device: int, stream: int
) -> tuple[int, int]: ...

# dense pools: X (n, d)
def min_dist_to_set(
    dtype: str,
    x_ptr: int,
    n: int,
    y_ptr: int,
    m: int,
    d: int,
    dist_ptr: int,
    index_ptr: int,
    device: int,
    stream: int,
    squared: bool = False,
) -> None: ...
def kcenter_init_labeled(
    dtype: str,
    x_ptr: int,
    n: int,
    d: int,
    rows_ptr: int,
    n_labeled: int,
    centres_ptr: int,
    mind_ptr: int,
    near_ptr: int,
    keys_ptr: int,
    device: int,
    stream: int,
) -> None: ...
def kcenter_init_first(
    dtype: str,
    first: int,
    n: int,
    mind_ptr: int,
    near_ptr: int,
    keys_ptr: int,
    device: int,
    stream: int,
) -> None: ...
def kcenter_steps(
    dtype: str,
    x_ptr: int,
    n: int,
    d: int,
    mind_ptr: int,
    near_ptr: int,
    centres_ptr: int,
    n_labeled: int,
    budget: int,
    keys_ptr: int,
    centre_dist2_ptr: int,
    centre_row_ptr: int,
    counter_ptr: int,
    prune: bool,
    t_begin: int,
    t_end: int,
    device: int,
    stream: int,
) -> int: ...  # centre rows read (computed on the host, no sync)
def kcenter_decode(
    keys_ptr: int, budget: int, picks_ptr: int, radius_ptr: int, device: int, stream: int
) -> None: ...

# factored pools: A (n, C), H (n, dh) of one storage dtype, sqnorm (n,) float32
def factored_centre_floats(C: int, dh: int) -> int: ...
def min_dist_to_set_factored(
    dtype: str,
    x_a_ptr: int,
    x_h_ptr: int,
    x_sqnorm_ptr: int,
    n: int,
    y_a_ptr: int,
    y_h_ptr: int,
    y_sqnorm_ptr: int,
    m: int,
    C: int,
    dh: int,
    dist_ptr: int,
    index_ptr: int,
    device: int,
    stream: int,
) -> None: ...
def kcenter_init_labeled_factored(
    dtype: str,
    a_ptr: int,
    h_ptr: int,
    sqnorm_ptr: int,
    n: int,
    C: int,
    dh: int,
    rows_a_ptr: int,
    rows_h_ptr: int,
    rows_sqnorm_ptr: int,
    n_labeled: int,
    centres_ptr: int,
    mind_ptr: int,
    near_ptr: int,
    keys_ptr: int,
    device: int,
    stream: int,
) -> None: ...
def kcenter_steps_factored(
    dtype: str,
    a_ptr: int,
    h_ptr: int,
    sqnorm_ptr: int,
    n: int,
    C: int,
    dh: int,
    mind_ptr: int,
    near_ptr: int,
    centres_ptr: int,
    n_labeled: int,
    budget: int,
    keys_ptr: int,
    centre_bound_ptr: int,
    centre_row_ptr: int,
    counter_ptr: int,
    prune: bool,
    t_begin: int,
    t_end: int,
    device: int,
    stream: int,
) -> int: ...  # centre rows read (computed on the host, no sync)

# k-means++ seeding (D^2 sampling), dense or factored
def kmeanspp_tiles(n: int) -> int: ...
def kmeanspp_init_labeled(
    dtype: str,
    x_ptr: int,
    n: int,
    d: int,
    rows_ptr: int,
    n_labeled: int,
    labeled_ptr: int,
    mind_ptr: int,
    tile_sum_ptr: int,
    tile_count_ptr: int,
    device: int,
    stream: int,
) -> None: ...
def kmeanspp_init_labeled_factored(
    dtype: str,
    a_ptr: int,
    h_ptr: int,
    sqnorm_ptr: int,
    n: int,
    C: int,
    dh: int,
    rows_a_ptr: int,
    rows_h_ptr: int,
    rows_sqnorm_ptr: int,
    n_labeled: int,
    labeled_ptr: int,
    mind_ptr: int,
    tile_sum_ptr: int,
    tile_count_ptr: int,
    device: int,
    stream: int,
) -> None: ...
def kmeanspp_init_first(
    first: int, n: int, mind_ptr: int, picks_ptr: int, device: int, stream: int
) -> None: ...
def kmeanspp_steps(
    dtype: str,
    x_ptr: int,
    n: int,
    d: int,
    mind_ptr: int,
    picks_ptr: int,
    k: int,
    uniforms_ptr: int,
    tile_sum_ptr: int,
    tile_count_ptr: int,
    totals_ptr: int,
    centre_row_ptr: int,
    first_given: bool,
    t_begin: int,
    t_end: int,
    device: int,
    stream: int,
) -> None: ...
def kmeanspp_steps_factored(
    dtype: str,
    a_ptr: int,
    h_ptr: int,
    sqnorm_ptr: int,
    n: int,
    C: int,
    dh: int,
    mind_ptr: int,
    picks_ptr: int,
    k: int,
    uniforms_ptr: int,
    tile_sum_ptr: int,
    tile_count_ptr: int,
    totals_ptr: int,
    centre_row_ptr: int,
    first_given: bool,
    t_begin: int,
    t_end: int,
    device: int,
    stream: int,
) -> None: ...

# batched Gram eigenvalues: Z (n, d) float32 or float64 (dtype "float32" | "float64"), indices
# int64; min_eig (n_groups,) and spectra (n_groups, min(n_labeled + G, d)) float64 (spectra_ptr 0:
# none). gram_scan -> (peak |z| over finite entries, rows with NaN / Inf, first such row or -1,
# groups failing the device check when n_groups > 0, first such group or -1); it synchronises the
# stream.
def gram_scan(
    dtype: str,
    z_ptr: int,
    n: int,
    d: int,
    device: int,
    stream: int,
    groups_ptr: int = 0,
    n_groups: int = 0,
    G: int = 0,
    labeled_sorted_ptr: int = 0,
    n_labeled: int = 0,
) -> tuple[float, int, int, int, int]: ...
def gram_min_eig(
    dtype: str,
    z_ptr: int,
    n: int,
    d: int,
    labeled_ptr: int,
    n_labeled: int,
    groups_ptr: int,
    n_groups: int,
    G: int,
    rtol: float,
    min_eig_ptr: int,
    spectra_ptr: int,
    device: int,
    stream: int,
    smem_limit: int = -1,
    small_max: int = -1,
    warp_max: int = -1,
) -> None: ...

# IHT top-b thresholding: s, sigma (n,) float32 -> support (b,) int64, w (n,) float32; returns
# (NaN / Inf entries of s, first, of sigma, first); it synchronises the stream.
def iht_threshold(
    s_ptr: int,
    sigma_ptr: int,
    n: int,
    b: int,
    alpha: float,
    support_ptr: int,
    w_ptr: int,
    device: int,
    stream: int,
    exact: bool = False,
    impl: int = -1,
) -> tuple[int, int, int, int]: ...
