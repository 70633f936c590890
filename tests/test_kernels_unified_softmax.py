"""The unified-max (asynchronized) softmax kernels against a float64 reference, on inputs built to leave
the safe range: huge and tiny scores, one dominant key, all-equal scores, mixed rows, lengths 1 to 4097.

Every check asks three things: the output is within the dtype's tolerance of softmax in float64, nothing
is NaN or inf, and the fallback counter equals the number of rows whose float64 max score lies outside the
safe range (rows too close to an edge to call are never generated).
"""

import pytest
import torch

pytest.importorskip("triton")

from fdpp.codegen.kernels import attention_decode, attention_prefill, kv_cache
from fdpp.codegen.kernels.testing import assert_close, interpreter_fallback, poisoned_allocations
from fdpp.runtime.reference_ops import attention as attention_reference
from fdpp.runtime.unified_max import safe_offsets

_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
HEADS = [(9, 3, 64), (4, 4, 64)]
PHI = 1.5
LOW, HIGH = (PHI + o for o in safe_offsets("float16"))       # safe range of the row max for float16
KINDS = ["huge", "tiny", "dominant", "equal", "mixed", "normal"]


def _scores_plan(kind: str, rows: int, length: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row (sequence, head) a query scale c and per key a value x: the score of key j is c * x_j (the
    first feature of q is c / scale, of the key x_j; the others are small noise)."""
    x = torch.randn(length, generator=g) * 0.5
    dominant = int(torch.randint(0, length, (1,), generator=g))
    c = torch.ones(rows)
    if kind == "huge":                      # one key far above the range: the unified exponent overflows
        x[dominant] = 8.0
        c.fill_(30.0)
    elif kind == "tiny":                    # every score far below the range: the unified exponent underflows
        x = -8.0 + 0.1 * torch.randn(length, generator=g)
        c.fill_(30.0)
    elif kind == "dominant":                # one key holds nearly all the mass, inside the range
        x[dominant] = 8.0
        c.fill_(1.2)
    elif kind == "equal":                   # all scores equal (the softmax is uniform)
        x.fill_(2.0)
    elif kind == "mixed":                   # rows inside, above and below, side by side
        x[dominant] = 4.0
        c = torch.tensor([(0.5, 10.0, -10.0)[r % 3] for r in range(rows)])
    return c, x


def _inputs(kind: str, batch: int, length: int, heads, seed: int):
    """q [B, S=length or 1 ...] is built by the callers; here: per-row query scales, keys, values (float16)."""
    n_heads, n_kv_heads, head_dim = heads
    g = torch.Generator().manual_seed(seed)
    scale = head_dim ** -0.5
    c, x = zip(*[_scores_plan(kind, n_heads, length, g) for _ in range(batch)])
    keys = torch.randn(batch, length, n_kv_heads, head_dim, generator=g) * 0.05
    keys[..., 0] = torch.stack(x)[:, :, None]
    values = torch.randn(batch, length, n_kv_heads, head_dim, generator=g)
    query_scale = torch.stack(c) / scale                                                # [B, Hq]
    return query_scale, keys.to(torch.float16), values.to(torch.float16), scale


def _expected_fallbacks(q, keys, positions, heads, scale) -> int:
    """Rows whose float64 max score is outside [LOW, HIGH]; fails if any row is too close to an edge to call."""
    n_heads, n_kv_heads, head_dim = heads
    b, s = positions.shape
    t = keys.shape[1]
    qh = q.double().view(b, s, n_heads, head_dim).transpose(1, 2)
    kh = keys.double().transpose(1, 2).repeat_interleave(n_heads // n_kv_heads, dim=1)        # [B, Hq, T, D]
    scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale
    visible = torch.arange(t)[None, None, None, :] <= positions[:, None, :, None]
    row_max = scores.masked_fill(~visible, float("-inf")).amax(-1)
    margin = torch.minimum((row_max - LOW).abs(), (row_max - HIGH).abs())
    assert float(margin.min()) > 0.05, "test data puts a row max on the edge of the safe range"
    return int(((row_max < LOW) | (row_max > HIGH)).sum())


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("length", [1, 7, 97, 4097])
@pytest.mark.parametrize("kind", KINDS)
def test_decode_unified_max_is_exact_and_counts_its_fallbacks(kind, length, heads):
    n_heads, n_kv_heads, head_dim = heads
    batch = 2
    query_scale, keys, values, scale = _inputs(kind, batch, length, heads, seed=length)
    q = torch.randn(batch, 1, n_heads, head_dim) * 0.05
    q[..., 0] = query_scale[:, None, :]
    q = q.reshape(batch, 1, n_heads * head_dim).to(torch.float16)
    positions = torch.full((batch, 1), length - 1)
    expected = _expected_fallbacks(q, keys, positions, heads, scale)
    if kind in ("huge", "tiny"):
        assert expected == batch * n_heads
    elif kind in ("dominant", "equal", "normal"):
        assert expected == 0
    # the cache holds keys 0..length-2; this step writes key length-1
    k_cache = torch.randn(batch, n_kv_heads, length + 3, head_dim).to(torch.float16)
    v_cache = torch.randn(batch, n_kv_heads, length + 3, head_dim).to(torch.float16)
    k_cache[:, :, :length] = keys.transpose(1, 2)
    v_cache[:, :, :length] = values.transpose(1, 2)
    k_new = keys[:, -1:].reshape(batch, 1, n_kv_heads * head_dim)
    v_new = values[:, -1:].reshape(batch, 1, n_kv_heads * head_dim)
    q, k_new, v_new, positions = (t.to(DEVICE) for t in (q, k_new, v_new, positions))
    k_cache, v_cache = k_cache.to(DEVICE), v_cache.to(DEVICE)
    reference = attention_reference(q.double(), k_new.double(), v_new.double(), positions, k_cache.double(),
                                    v_cache.double(), n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                                    scale=scale).to(torch.float16)
    fallbacks = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    with poisoned_allocations():
        kv_cache.write_kv(k_new, v_new, positions, k_cache, v_cache)
        out = attention_decode.attention_decode(q, k_cache, v_cache, positions, n_heads=n_heads,
                                                n_kv_heads=n_kv_heads, head_dim=head_dim, scale=scale,
                                                unified=(PHI, LOW, HIGH), fallbacks=fallbacks, num_splits=8,
                                                min_split_keys=64, block_n=64)
    assert_close(out, reference, f"unified decode, {kind}, length {length}")
    assert int(fallbacks) == expected


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("length", [1, 7, 97])
@pytest.mark.parametrize("kind", KINDS)
def test_prefill_unified_max_is_exact_and_counts_its_fallbacks(kind, length, heads):
    n_heads, n_kv_heads, head_dim = heads
    batch = 2
    query_scale, keys, values, scale = _inputs(kind, batch, length, heads, seed=100 + length)
    q = torch.randn(batch, length, n_heads, head_dim) * 0.05
    q[..., 0] = query_scale[:, None, :]
    q = q.reshape(batch, length, n_heads * head_dim).to(torch.float16)
    positions = torch.arange(length)[None, :].expand(batch, length).contiguous()
    expected = _expected_fallbacks(q, keys, positions, heads, scale)
    k = keys.reshape(batch, length, n_kv_heads * head_dim)
    v = values.reshape(batch, length, n_kv_heads * head_dim)
    q, k, v, positions = (t.to(DEVICE) for t in (q, k, v, positions))
    reference = attention_reference(q.double(), k.double(), v.double(), positions, None, None, n_heads=n_heads,
                                    n_kv_heads=n_kv_heads, head_dim=head_dim, scale=scale).to(torch.float16)
    fallbacks = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    with poisoned_allocations():
        out = attention_prefill.attention_prefill(q, k, v, positions, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                                  head_dim=head_dim, scale=scale, unified=(PHI, LOW, HIGH),
                                                  fallbacks=fallbacks, block_m=16, block_n=32)
    assert_close(out, reference, f"unified prefill, {kind}, length {length}")
    assert int(fallbacks) == expected


def test_reference_counts_the_same_rows():
    """The CPU reference executor's count (reference_ops.attention with `unified`) matches the definition."""
    heads = (4, 4, 64)
    query_scale, keys, values, scale = _inputs("mixed", 2, 33, heads, seed=7)
    q = torch.randn(2, 33, 4, 64, generator=torch.Generator().manual_seed(8)) * 0.05
    q[..., 0] = query_scale[:, None, :]
    q = q.reshape(2, 33, 256).to(torch.float16)
    positions = torch.arange(33)[None, :].expand(2, 33)
    expected = _expected_fallbacks(q, keys, positions, heads, scale)
    counter = torch.zeros(1, dtype=torch.int64)
    out = attention_reference(q.float(), keys.reshape(2, 33, 256).float(), values.reshape(2, 33, 256).float(),
                              positions, None, None, n_heads=4, n_kv_heads=4, head_dim=64, scale=scale,
                              unified=(PHI, LOW, HIGH), fallbacks=counter)
    plain = attention_reference(q.float(), keys.reshape(2, 33, 256).float(), values.reshape(2, 33, 256).float(),
                                positions, None, None, n_heads=4, n_kv_heads=4, head_dim=64, scale=scale)
    assert int(counter) == expected > 0
    # float32 rounding only (an elementwise tolerance failed on near-zero outputs, sums of unit-size terms)
    assert float((out - plain).norm() / plain.norm()) < 1e-6
