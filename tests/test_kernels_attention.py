"""KV-cache write, prefill attention and split-KV decode attention against reference_ops.attention.

The plan's ATTENTION op is write_kv then attention; the reference does both on a copy of the same cache.
Caches start full of random values (never zeros) so a kernel that reads a slot it should not changes the
result.
"""

import pytest
import torch

pytest.importorskip("triton")

from fdpp.codegen.kernels import attention_decode, attention_prefill, kv_cache
from fdpp.codegen.kernels.testing import assert_close, interpreter_fallback, poisoned_allocations, random_tensor
from helpers import rows_of_interleaved

# without a GPU: in-process under TRITON_INTERPRET=1, else every test here is run again in a child process
_skip_here, test_in_interpreter_process = interpreter_fallback(__file__)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
HEADS = [(9, 3, 64), (4, 4, 64)]           # (query heads, KV heads, head dim): GQA groups of 3, and plain MHA
CACHE_ROWS, CACHE_SLOTS = 4, 160


def _step(batch, seq, heads, dtype, starts, seed):
    """Random q, k, v for `seq` tokens per row, row b at positions starts[b] .. starts[b] + seq - 1, and a
    random cache (earlier slots hold the row's past; later slots garbage the kernels must not read)."""
    n_heads, n_kv_heads, head_dim = heads
    torch.manual_seed(seed)
    q = random_tensor((batch, seq, n_heads * head_dim), dtype, DEVICE)
    k = random_tensor((batch, seq, n_kv_heads * head_dim), dtype, DEVICE)
    v = random_tensor((batch, seq, n_kv_heads * head_dim), dtype, DEVICE)
    positions = torch.tensor(starts, device=DEVICE)[:, None] + torch.arange(seq, device=DEVICE)[None, :]
    k_cache = random_tensor((CACHE_ROWS, n_kv_heads, CACHE_SLOTS, head_dim), dtype, DEVICE)
    v_cache = random_tensor((CACHE_ROWS, n_kv_heads, CACHE_SLOTS, head_dim), dtype, DEVICE)
    return q, k, v, positions, k_cache, v_cache


def _attention_reference(q, k, v, positions, k_cache, v_cache, heads):
    """reference_ops.attention on copies of the caches; returns the output and the caches it wrote."""
    n_heads, n_kv_heads, head_dim = heads
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    out = attention_prefill.attention_reference(q, k, v, positions, k_ref, v_ref, n_heads=n_heads,
                                                n_kv_heads=n_kv_heads, head_dim=head_dim, scale=head_dim ** -0.5)
    return out, k_ref, v_ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads", HEADS)
def test_write_kv(heads, dtype):
    q, k, v, positions, k_cache, v_cache = _step(3, 7, heads, dtype, starts=[0, 40, 13], seed=20)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    kv_cache.write_kv_reference(k, v, positions, k_ref, v_ref)
    kv_cache.write_kv(k, v, positions, k_cache, v_cache, block_heads=2)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


# (batch, seq, start positions per row): a first prompt, prompts continuing a cached past, one token
PREFILL_CASES = [(1, 1, [0]), (3, 7, [0, 21, 5]), (1, 97, [0]), (3, 97, [0, 40, 3])]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("batch,seq,starts", PREFILL_CASES)
@pytest.mark.parametrize("unified", [None, (0.0, -9.0, 10.5)], ids=["synchronized", "unified"])
def test_prefill_attention_through_cache(batch, seq, starts, heads, dtype, unified):
    q, k, v, positions, k_cache, v_cache = _step(batch, seq, heads, dtype, starts, seed=21)
    ref, k_ref, v_ref = _attention_reference(q, k, v, positions, k_cache, v_cache, heads)
    n_heads, n_kv_heads, head_dim = heads
    with poisoned_allocations():
        kv_cache.write_kv(k, v, positions, k_cache, v_cache)
        out = attention_prefill.attention_prefill(q, k_cache, v_cache, positions, n_heads=n_heads,
                                                  n_kv_heads=n_kv_heads, head_dim=head_dim, unified=unified,
                                                  scale=head_dim ** -0.5, block_m=32, block_n=32)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
    assert_close(out, ref, "attention_prefill (cache)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("batch,seq", [(1, 1), (3, 7), (1, 97)])
def test_prefill_attention_without_cache(batch, seq, heads, dtype):
    q, k, v, positions, _, _ = _step(batch, seq, heads, dtype, [0] * batch, seed=22)
    n_heads, n_kv_heads, head_dim = heads
    ref = attention_prefill.attention_reference(q, k, v, positions, None, None, n_heads=n_heads,
                                                n_kv_heads=n_kv_heads, head_dim=head_dim, scale=head_dim ** -0.5)
    with poisoned_allocations():
        out = attention_prefill.attention_prefill(q, k, v, positions, n_heads=n_heads, n_kv_heads=n_kv_heads,
                                                  head_dim=head_dim, scale=head_dim ** -0.5, block_n=16)
    assert_close(out, ref, "attention_prefill (no cache)")


# (positions of each row's new token, splits, shortest slice, key tile): lengths 1 to 150, splits left empty
# for short rows, and slices longer than length / splits
DECODE_CASES = [([0], 4, 16, 16), ([37, 0, 96], 4, 16, 16), ([149, 6, 63], 3, 32, 32), ([96, 12, 7], 1, 64, 64),
                ([149, 40], 8, 64, 32)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("starts,num_splits,min_split_keys,block_n", DECODE_CASES)
@pytest.mark.parametrize("unified", [None, (0.0, -9.0, 10.5)], ids=["synchronized", "unified"])
def test_decode_attention(starts, num_splits, min_split_keys, block_n, heads, dtype, unified):
    q, k, v, positions, k_cache, v_cache = _step(len(starts), 1, heads, dtype, starts, seed=23)
    ref, _, _ = _attention_reference(q, k, v, positions, k_cache, v_cache, heads)
    n_heads, n_kv_heads, head_dim = heads
    fallbacks = torch.zeros(1, dtype=torch.int32, device=DEVICE)
    with poisoned_allocations():
        kv_cache.write_kv(k, v, positions, k_cache, v_cache)
        out = attention_decode.attention_decode(q, k_cache, v_cache, positions, n_heads=n_heads,
                                                n_kv_heads=n_kv_heads, head_dim=head_dim, scale=head_dim ** -0.5,
                                                unified=unified, fallbacks=fallbacks, num_splits=num_splits,
                                                min_split_keys=min_split_keys, block_n=block_n)
    assert_close(out, ref, "attention_decode")
    assert int(fallbacks) == 0       # scores of unit-normal inputs sit well inside [phi - 9, phi + 10.5]


@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("starts,num_splits,min_split_keys,block_n", [DECODE_CASES[1], DECODE_CASES[4]])
@pytest.mark.parametrize("unified", [None, (0.0, -9.0, 10.5)], ids=["synchronized", "unified"])
def test_decode_attention_writes_the_new_key_and_value(starts, num_splits, min_split_keys, block_n, heads, unified):
    """new_kv: the kernel stores the step's k and v at each sequence's position itself (one slice or several)
    and attends to them; the caches end up exactly as write_kv leaves them."""
    q, k, v, positions, k_cache, v_cache = _step(len(starts), 1, heads, torch.float16, starts, seed=25)
    ref, _, _ = _attention_reference(q, k, v, positions, k_cache, v_cache, heads)
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    kv_cache.write_kv(k, v, positions, expected_k, expected_v)
    n_heads, n_kv_heads, head_dim = heads
    with poisoned_allocations():
        out = attention_decode.attention_decode(q, k_cache, v_cache, positions, n_heads=n_heads,
                                                n_kv_heads=n_kv_heads, head_dim=head_dim, scale=head_dim ** -0.5,
                                                unified=unified, new_kv=(k, v), num_splits=num_splits,
                                                min_split_keys=min_split_keys, block_n=block_n)
    assert_close(out, ref, "attention_decode (new_kv)")
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("starts,num_splits,min_split_keys,block_n", [DECODE_CASES[1], DECODE_CASES[4]])
@pytest.mark.parametrize("unified", [None, (0.0, -9.0, 10.5)], ids=["synchronized", "unified"])
def test_decode_attention_rotates_q_and_the_new_key(starts, num_splits, min_split_keys, block_n, heads, dtype,
                                                    unified):
    """rotary: q and the step's key arrive unrotated with each position's cos/sin rows; the kernel rotates
    them (the plan's rotary ops fused in): the output is reference attention of the rotated q, k, and the cache
    holds the key as the rotary kernel would have rotated it."""
    from fdpp.codegen.kernels.rotary import rotary

    q, k, v, positions, k_cache, v_cache = _step(len(starts), 1, heads, dtype, starts, seed=26)
    n_heads, n_kv_heads, head_dim = heads
    angles = random_tensor((len(starts), 1, head_dim), torch.float32, DEVICE) * 3.0
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    ref = attention_prefill.attention_reference(q, k, v, positions, k_ref, v_ref, n_heads=n_heads,
                                                n_kv_heads=n_kv_heads, head_dim=head_dim, scale=head_dim ** -0.5,
                                                unified=unified, rotary_tables=(cos, sin))
    expected_k, expected_v = k_cache.clone(), v_cache.clone()
    kv_cache.write_kv(rotary(k, cos, sin, head_dim), v, positions, expected_k, expected_v)
    with poisoned_allocations():
        out = attention_decode.attention_decode(q, k_cache, v_cache, positions, n_heads=n_heads,
                                                n_kv_heads=n_kv_heads, head_dim=head_dim, scale=head_dim ** -0.5,
                                                unified=unified, new_kv=(k, v), rotary=(cos, sin),
                                                num_splits=num_splits, min_split_keys=min_split_keys,
                                                block_n=block_n)
    assert_close(out, ref, "attention_decode (rotary)")
    assert_close(k_cache, expected_k, "attention_decode (rotated key in the cache)")
    assert torch.equal(v_cache, expected_v)
    unrotated = attention_prefill.attention_reference(q, k, v, positions, k_cache.clone(), v_cache.clone(),
                                                      n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                                                      scale=head_dim ** -0.5)
    assert not torch.allclose(out.float(), unrotated.float(), atol=1e-2)   # the rotation did take effect


@pytest.mark.parametrize("together", [2, 4])
@pytest.mark.parametrize("starts,num_splits,min_split_keys,block_n",
                         [DECODE_CASES[1], DECODE_CASES[3], DECODE_CASES[4]])
@pytest.mark.parametrize("unified", [None, (0.0, -9.0, 10.5), (0.0, -0.5, 0.5)],
                         ids=["synchronized", "unified", "fallback"])
def test_decode_attention_writes_rows_interleaved(starts, num_splits, min_split_keys, block_n, unified, together):
    """out_rows_together: each store (one slice's, the combine's, the exact fallback's) puts a sequence's row
    among its block's, [cdiv(B, T), Hq*D, T], as o_proj's chunked-CSR kernel reads x; values as the row-major run."""
    heads = (9, 3, 64)
    q, k, v, positions, k_cache, v_cache = _step(len(starts), 1, heads, torch.float16, starts, seed=27)
    n_heads, n_kv_heads, head_dim = heads
    kv_cache.write_kv(k, v, positions, k_cache, v_cache)
    runs = []
    for out_rows in (1, together):
        fallbacks = torch.zeros(1, dtype=torch.int32, device=DEVICE)
        with poisoned_allocations():
            runs.append(attention_decode.attention_decode(
                q, k_cache, v_cache, positions, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim,
                scale=head_dim ** -0.5, unified=unified, fallbacks=fallbacks, num_splits=num_splits,
                min_split_keys=min_split_keys, block_n=block_n, out_rows_together=out_rows))
        assert (int(fallbacks) > 0) == (unified is not None and unified[1] == -0.5)   # the fallback case recomputes
    plain, interleaved = runs
    assert interleaved.shape == (-(-len(starts) // together), n_heads * head_dim, together)
    assert torch.equal(rows_of_interleaved(interleaved, len(starts)), plain.reshape(len(starts), -1))


def test_decode_attention_reuses_a_workspace():
    heads = (9, 3, 64)
    q, k, v, positions, k_cache, v_cache = _step(3, 1, heads, torch.float32, [5, 70, 33], seed=24)
    ref, _, _ = _attention_reference(q, k, v, positions, k_cache, v_cache, heads)
    kv_cache.write_kv(k, v, positions, k_cache, v_cache)
    workspace = attention_decode.allocate_decode_workspace(3, 9, 3, 64, 2, DEVICE)
    for part in workspace[:3]:
        part.fill_(float("nan"))
    for _ in range(2):              # the arrival counters are left zero for the next launch
        out = attention_decode.attention_decode(q, k_cache, v_cache, positions, n_heads=9, n_kv_heads=3,
                                                head_dim=64, scale=0.125, num_splits=2, min_split_keys=16,
                                                block_n=16, workspace=workspace)
        assert_close(out, ref, "attention_decode (workspace)")
        assert not workspace[3].any()
