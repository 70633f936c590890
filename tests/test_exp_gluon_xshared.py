"""scripts/exp_gluon_xshared.py (architecture note 35): its entry rearrangements keep the weight exactly, the
re-cut chunks give each load 8 bank groups, and its Gluon kernels compile for sm_90 with one 16-byte shared load an
entry (where the installed Triton's Gluon has the shared-memory gather). The kernels run only on a GPU."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_sparse  # noqa: E402
import exp_gluon_xshared as X  # noqa: E402

from fdpp.runtime.sparse_formats import encode_chunked_csr, spread_banks  # noqa: E402


def _pruned(n: int, k: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g).half()
    keep = torch.rand(n, k, generator=g) < density
    return torch.where(keep, w, torch.zeros((), dtype=w.dtype))


def _decoded(values, offsets, bases, k) -> torch.Tensor:
    """The dense weight the entries give; every entry, padding included, must name a column of x (< k)."""
    columns = bases.long().repeat_interleave(X.CHUNK, dim=1) + offsets.long()
    assert int(columns.max()) < k, "an entry past x's last column"
    dense = torch.zeros(values.shape[0], k + 256, dtype=torch.float64)
    dense.scatter_add_(1, columns, values.double())
    return dense[:, :k]


@pytest.mark.parametrize("n,k,density", [(37, 600, 0.3), (16, 4096, 0.3), (9, 1000, 0.9), (5, 300, 0.02)])
def test_rearranged_entries_decode_to_the_weight(n, k, density):
    weight = _pruned(n, k, density, seed=n + k)
    encoded = encode_chunked_csr(weight)
    for words in (2, 4):
        spread = spread_banks(encoded, groups=32 // words).tensors
        assert torch.equal(_decoded(spread["values"], spread["offsets"], spread["bases"], k), weight.double())
    for fill in (True, False):
        values, offsets, bases = X.balanced_chunks(weight, fill=fill)
        assert values.dtype == weight.dtype and offsets.dtype == torch.uint8 and bases.dtype == torch.int32
        assert torch.equal(_decoded(values, offsets, bases, k), weight.double()), f"fill={fill}"


def test_balanced_chunks_without_fill_give_each_load_eight_bank_groups():
    n, k = 24, 4096
    weight = _pruned(n, k, 0.3, seed=5)
    values, offsets, bases = X.balanced_chunks(weight, fill=False)
    columns = (bases.long().repeat_interleave(X.CHUNK, dim=1) + offsets.long()).view(n, -1, 8, 4)
    groups = columns.transpose(2, 3) % 8                      # [N, chunks, load j, thread]: thread t's j-th entry
    live = (values.view(n, -1, X.CHUNK) != 0).any(2)          # chunks past a row's end read one address
    distinct = torch.nn.functional.one_hot(groups, 8).sum(3).max(3).values     # [N, chunks, j]
    assert bool((distinct[live] == 1).all())
    assert bases.shape[1] > encode_chunked_csr(weight).tensors["bases"].shape[1]   # the price: more chunks


gluon = pytest.importorskip("triton.experimental.gluon.language")


@pytest.mark.skipif(not hasattr(gluon.shared_memory_descriptor, "gather"),
                    reason="this Triton's Gluon has no shared-memory gather")
def test_packed_kernel_compiles_for_sm90_with_a_vector_shared_load_an_entry():
    from fdpp.codegen.build import compile_kernel
    from fdpp.compiler.targets import get_target
    built = compile_kernel(X.xshared_packed_kernel(), get_target("h100"), X.PACKED_SIGNATURE,
                           {"K": 4096, "WORDS": 4, "EPT": 4, "WARPS": 8, "XB": X.X_BLOCK, "UNROLL": 4, "GROUPS": 2,
                            "K_ALLOC": 4096, "SPLIT_AT": 0, "HI_ALLOC": 1}, name="xshared_probe", num_warps=8)
    ptx = built.ptx if isinstance(built.ptx, str) else built.ptx.decode()
    assert ptx.count("ld.shared.v4.b32") >= 4 * 4            # 4 entries a set, 4 sets a step (+ the reduction's)
    assert "ld.shared.b16" not in ptx and "ld.shared.u16" not in ptx   # no gather split into halves
    assert 64 << 10 <= built.shared_memory_bytes <= X.SHARED_LIMIT


@pytest.mark.parametrize("label", ["as encoded", "spread", "balanced", "balanced, no fill"])
def test_two_buffer_arrangements_put_low_columns_first_and_decode_to_the_weight(label):
    n, k, split_at = 12, 3000, 2048
    weight = _pruned(n, k, 0.3, seed=11)
    t = X.arranged_copies(bench_sparse, weight, label, 4, split_at)[0]
    assert torch.equal(_decoded(t["values"], t["offsets"], t["bases"], k), weight.double())
    low_columns = t["bases"][:, :t["chunks_lo"]].long().repeat_interleave(X.CHUNK, 1) + \
        t["offsets"][:, :t["chunks_lo"] * X.CHUNK].long()
    assert int(low_columns.max()) < split_at                          # the low buffer's chunks stay in it
    assert int(t["bases"][:, t["chunks_lo"]:].min()) >= split_at      # padding chunks included
