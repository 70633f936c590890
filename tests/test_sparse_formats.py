"""Tiled-CSL, bitmap and chunked-CSR encodings (runtime/sparse_formats.py): exact round trips on awkward shapes
and densities 0-100%, and Tiled-CSL and chunked-CSR entries read back by their layouts alone (independent,
entry-by-entry decoders written from the spec)."""

from __future__ import annotations

import pytest
import torch

from fdpp.codegen.kernels._probe_gluon import GLUON_SHARED_SCATTER
from fdpp.runtime import sparse_formats
from fdpp.runtime.sparse_formats import (CHUNKED_CSR_SPAN, SparseFormatError, decode, encode_bitmap,
                                         encode_chunked_csr, encode_tiled_csl, encoded_bytes)

SHAPES = [(1, 1), (7, 33), (130, 70), (128, 64), (256, 200), (576, 96)]
DENSITIES = [0.0, 0.01, 0.3, 0.5, 0.9, 1.0]


def _sparse(shape, density: float, dtype=torch.float16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(shape, generator=g) + 0.1).to(dtype) * torch.where(torch.rand(shape, generator=g) < 0.5, -1, 1)
    keep = torch.rand(shape, generator=g) < density
    return torch.where(keep, w, torch.zeros((), dtype=dtype))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    as_int = {2: torch.int16, 4: torch.int32}[a.element_size()]
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(as_int), b.view(as_int))


def _fp16_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """int32 tensor of fp16 bit patterns (0..0xFFFF) -> the float16 values they encode."""
    return ((bits ^ 0x8000) - 0x8000).to(torch.int16).view(torch.float16)


def _tiled_csl_by_the_spec(entries: torch.Tensor, offsets: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Decode entry by entry: tile t = i * (K_pad / 64) + j covers rows 128i.., columns 64j..; an entry's high
    16 bits are row * 64 + (col ^ ((row % 8) << 3)), its low 16 bits the fp16 value."""
    k_tiles = -(-k // 64)
    out = torch.zeros((-(-n // 128) * 128, k_tiles * 64), dtype=torch.int32)
    for t in range(offsets.numel() - 2):
        i, j = divmod(t, k_tiles)
        for word in entries[4 * int(offsets[t]): 4 * int(offsets[t + 1])].tolist():
            word &= 0xFFFFFFFF
            location, bits = word >> 16, word & 0xFFFF
            row = location // 64
            col = (location % 64) ^ ((row % 8) << 3)
            if bits:
                out[128 * i + row, 64 * j + col] = bits
            else:        # a padding entry: zero, at a position whose weight is zero
                assert out[128 * i + row, 64 * j + col] == 0
    return _fp16_from_bits(out)[:n, :k]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
def test_tiled_csl_round_trip_is_exact(shape, density):
    w = _sparse(shape, density)
    enc = encode_tiled_csl(w)
    assert _same_bits(decode(enc.meta(), enc.tensors), w)
    assert enc.nnz == int((w != 0).sum())
    entries, offsets = enc.tensors["entries"], enc.tensors["tile_offsets"]
    tiles = (enc.padded_shape[0] // 128) * (enc.padded_shape[1] // 64)
    assert entries.dtype == torch.int32 and offsets.dtype == torch.int32
    assert offsets.numel() == tiles + 2 and offsets[0] == 0 and offsets[-1] == offsets[-2]
    assert int(offsets[-1]) * 4 == entries.numel()
    assert enc.padded_shape == (-(-shape[0] // 128) * 128, -(-shape[1] // 64) * 64)


@pytest.mark.parametrize("shape,density", [((130, 70), 0.3), ((256, 200), 0.9), ((7, 33), 1.0), ((128, 64), 0.5)])
def test_tiled_csl_entries_decode_by_the_layout_alone(shape, density):
    w = _sparse(shape, density, seed=3)
    enc = encode_tiled_csl(w)
    assert _same_bits(_tiled_csl_by_the_spec(enc.tensors["entries"], enc.tensors["tile_offsets"], *shape), w)
    locations = (enc.tensors["entries"].to(torch.int64) & 0xFFFFFFFF) >> 16
    offsets = enc.tensors["tile_offsets"]
    for t in range(offsets.numel() - 2):             # ascending location inside every tile
        tile = locations[4 * int(offsets[t]): 4 * int(offsets[t + 1])]
        assert torch.all(tile[1:] > tile[:-1])


def test_tiled_csl_pads_every_tile_to_a_multiple_of_four_with_zeros():
    w = torch.zeros(128, 128, dtype=torch.float16)
    w[0, :5] = torch.arange(1, 6, dtype=torch.float16)        # tile 0: 5 nonzeros -> 8 entries
    w[3, 64] = -2.0                                            # tile 1: 1 nonzero -> 4 entries
    enc = encode_tiled_csl(w)
    assert enc.tensors["tile_offsets"].tolist() == [0, 2, 3, 3]
    values = enc.tensors["entries"] & 0xFFFF
    assert int((values != 0).sum()) == 6 and enc.nnz == 6


def test_tiled_csl_keeps_negative_zero_and_refuses_float32():
    w = torch.zeros(4, 4, dtype=torch.float16)
    w[1, 2] = -0.0
    enc = encode_tiled_csl(w)
    assert enc.nnz == 1 and _same_bits(decode(enc.meta(), enc.tensors), w)
    with pytest.raises(SparseFormatError, match="16-bit"):
        encode_tiled_csl(w.float())


def test_tiled_csl_bfloat16_round_trip():
    w = _sparse((130, 70), 0.4, torch.bfloat16)
    enc = encode_tiled_csl(w)
    assert _same_bits(decode(enc.meta(), enc.tensors), w)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("tile", [(16, 64), (32, 256)])
def test_bitmap_round_trip_is_exact(shape, density, tile):
    w = _sparse(shape, density)
    enc = encode_bitmap(w, tile)
    assert _same_bits(decode(enc.meta(), enc.tensors), w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bitmap_round_trip_other_dtypes(dtype):
    w = _sparse((40, 96), 0.3, dtype)
    enc = encode_bitmap(w, (16, 64))
    assert enc.tensors["values"].dtype == dtype
    assert _same_bits(decode(enc.meta(), enc.tensors), w)


def test_bitmap_layout_by_the_spec():
    w = _sparse((20, 70), 0.4, seed=5)
    tile = (16, 64)
    enc = encode_bitmap(w, tile)
    bits, values, offsets = enc.tensors["bits"], enc.tensors["values"], enc.tensors["tile_offsets"]
    assert enc.padded_shape == (32, 128) and bits.shape == (32, 4)
    for r in range(20):                                        # bit b of word w of row r <=> W[r, 32w + b] != 0
        for c in range(70):
            assert bool((int(bits[r, c // 32]) >> (c % 32)) & 1) == bool(w[r, c] != 0)
    k_tiles = 2
    expected = []
    for t in range(4):                                         # values tile by tile, row-major inside a tile
        i, j = divmod(t, k_tiles)
        assert int(offsets[t]) == len(expected)
        block = torch.nn.functional.pad(w, (0, 58, 0, 12))[16 * i:16 * i + 16, 64 * j:64 * j + 64]
        expected += block[block != 0].tolist()
    assert int(offsets[-1]) == len(expected) and values.tolist() == expected


def test_encoded_bytes_matches_the_encoders():
    w = _sparse((256, 512), 0.3)
    density = float((w != 0).float().mean())
    csr = encode_chunked_csr(w)
    for enc, fmt, tile in ((encode_bitmap(w, (16, 256)), "bitmap", (16, 256)),
                           (encode_tiled_csl(w), "tiled_csl", (128, 64)), (csr, "chunked_csr", csr.tile)):
        assert encoded_bytes(fmt, (256, 512), density, tile) == pytest.approx(enc.nbytes, rel=0.02)


def test_decoders_refuse_inconsistent_tensors():
    enc = encode_bitmap(_sparse((32, 64), 0.5), (16, 64))
    broken = dict(enc.tensors, tile_offsets=enc.tensors["tile_offsets"][:-1])
    with pytest.raises(SparseFormatError, match="tile_offsets"):
        decode(enc.meta(), broken)
    csl = encode_tiled_csl(_sparse((32, 64), 0.5))
    with pytest.raises(SparseFormatError, match="tile_offsets"):
        decode(csl.meta(), dict(csl.tensors, entries=csl.tensors["entries"][:-4]))


@pytest.mark.parametrize("shape", SHAPES + [(3, 1000)])
@pytest.mark.parametrize("density", DENSITIES)
def test_chunked_csr_round_trip_is_exact(shape, density):
    w = _sparse(shape, density)
    enc = encode_chunked_csr(w)
    assert _same_bits(decode(enc.meta(), enc.tensors), w)
    assert enc.nnz == int((w != 0).sum()) and enc.padded_shape == shape


@pytest.mark.parametrize("shape,density,chunk", [((5, 1000), 0.3, 32), ((9, 3000), 0.02, 32), ((4, 70), 1.0, 8),
                                                 ((2, 600), 0.0, 32)])
def test_chunked_csr_layout_by_the_spec(shape, density, chunk):
    """Entry e of row r is at column bases[r, e // chunk] + offsets[r, e]; padding entries have zero bits;
    a chunk's columns ascend from its base within 256 columns; each row lists its nonzeros in column order."""
    w = _sparse(shape, density, dtype=torch.bfloat16, seed=3)
    enc = encode_chunked_csr(w, chunk)
    values, offsets, bases = (enc.tensors[p] for p in ("values", "offsets", "bases"))
    chunks = bases.shape[1]
    assert enc.tile == (chunks, chunk) and values.shape == offsets.shape == (shape[0], chunks * chunk)
    assert offsets.dtype == torch.uint8 and bases.dtype == torch.int32 and values.dtype == torch.bfloat16
    for r in range(shape[0]):
        seen = []
        for e in range(chunks * chunk):
            base, offset = int(bases[r, e // chunk]), int(offsets[r, e])
            bits = int(values[r, e].view(torch.int16))
            if bits:
                assert offset < CHUNKED_CSR_SPAN and (not seen or base + offset > seen[-1][0])
                seen.append((base + offset, bits))
            else:
                assert offset == 0
        expected = [(c, int(w[r, c].view(torch.int16))) for c in range(shape[1]) if int(w[r, c].view(torch.int16))]
        assert seen == expected


def test_chunked_csr_row_blocks_encode_as_one_block(monkeypatch):
    """Rows are encoded a block at a time, blocks needing different chunk counts padded to the widest: the same
    tensors as one block, and an exact round trip."""
    w = _sparse((23, 300), 0.3, seed=4)
    w[5] = _sparse((1, 300), 1.0, seed=6)[0]              # a full row: the most chunks, in the second block
    w[20:] = 0                                            # an empty last block
    whole = encode_chunked_csr(w)
    monkeypatch.setattr(sparse_formats, "ENCODE_BLOCK_ELEMENTS", 1000)   # 3 rows a block
    blocks = encode_chunked_csr(w)
    assert blocks.tile == whole.tile and blocks.nnz == whole.nnz
    assert all(torch.equal(blocks.tensors[p], whole.tensors[p]) for p in whole.tensors)
    assert _same_bits(decode(blocks.meta(), blocks.tensors), w)


def test_chunked_csr_keeps_negative_zero_and_float32():
    w = _sparse((6, 300), 0.4, dtype=torch.float32)
    w[2, 7] = -0.0
    enc = encode_chunked_csr(w)
    assert _same_bits(decode(enc.meta(), enc.tensors), w) and enc.nnz == int((w.view(torch.int32) != 0).sum())


def test_chunked_csr_decoder_refuses_inconsistent_tensors():
    enc = encode_chunked_csr(_sparse((8, 500), 0.5))
    with pytest.raises(SparseFormatError, match="do not fit"):
        decode(enc.meta(), dict(enc.tensors, offsets=enc.tensors["offsets"].to(torch.int32)))
    far = enc.tensors["bases"].clone()
    far[0, 0] = 10_000
    with pytest.raises(SparseFormatError, match="outside"):
        decode(enc.meta(), dict(enc.tensors, bases=far))


def _gluon_swizzled_tile_offsets():
    """{flat offset: (row, column)} where Gluon's SwizzledSharedLayout(8, 1, 8, [1, 0]) keeps a 128 x 64 fp16 tile's
    elements (its linear layout, evaluated without compiling a kernel)."""
    import triton.experimental.gluon.language as gl
    from triton._C.libtriton import gluon_ir, ir
    from triton.experimental.gluon.language._semantic import GluonSemantic
    context = ir.context()
    ir.load_dialects(context)
    semantic = GluonSemantic(gluon_ir.GluonOpBuilder(context))
    layout = gl.to_linear_layout(gl.SwizzledSharedLayout(8, 1, 8, [1, 0]), [128, 64], _semantic=semantic).value
    where = {}
    for offset in range(128 * 64):                   # a linear layout: XOR of the bases of the offset's set bits
        row = column = 0
        for bit, (r, c) in enumerate(layout.offset_bases):
            if offset >> bit & 1:
                row, column = row ^ r, column ^ c
        where[offset] = (row, column)
    return where


@pytest.mark.skipif(not GLUON_SHARED_SCATTER, reason="this triton's Gluon has no shared-memory scatter")
def test_tiled_csl_locations_are_where_gluons_swizzled_tile_keeps_the_element():
    """scripts/exp_gluon_ccsr.py's Tiled-CSL kernel scatters each entry's value to the flat offset its high half
    names in a tile laid out SwizzledSharedLayout(8, 1, 8, [1, 0]) (architecture note 32): that is only right if
    the layout keeps (row, column) exactly at Flash-LLM's location row * 64 + (column ^ ((row % 8) << 3))."""
    where = _gluon_swizzled_tile_offsets()
    assert sorted(where.values()) == [(r, c) for r in range(128) for c in range(64)]
    w = _sparse((128, 64), 0.6, seed=11)
    entries = encode_tiled_csl(w).tensors["entries"].to(torch.int64) & 0xFFFFFFFF
    tile = torch.zeros(128, 64, dtype=torch.int32)
    for entry in entries.tolist():                   # scatter as the kernel does, then read through the layout
        tile[where[entry >> 16]] = entry & 0xFFFF
    assert _same_bits(_fp16_from_bits(tile), w)
