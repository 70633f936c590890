"""Sparse weight encodings (Flash-LLM, DESIGN.md §6): Tiled-CSL, a bitmap-tiled format and chunked CSR, with
exact encoders and decoders.

Tiled-CSL and bitmap encode a weight W [N, K] (nn.Linear layout, N output features) after padding it with zero rows and
columns to a multiple of the tile; the padding is recorded as `padded_shape`. A position is "nonzero" when
its bits are not all zero, so -0.0 survives the round trip.

Tiled-CSL, exactly Flash-LLM's layout (16-bit dtypes only):
- tiles of 128 rows x 64 columns in row-major tile order, t = i * (K_pad / 64) + j;
- one 32-bit word per nonzero: the value's 16 bits low, its location `row * 64 + (col ^ ((row % 8) << 3))`
  inside the tile high (the XOR is Flash-LLM's shared-memory bank swizzle); stored as int32 (the same bits);
- each tile's entries padded to a multiple of 4 with zero-valued entries at positions whose weight is zero;
  inside a tile, entries are in ascending location order (the order is free in the format);
- tile_offsets int32 [T + 2]: 0, then the running entry count / 4 after each tile, the total repeated last.

Bitmap (SpInfer-like; tile shape chosen per weight, `tile` = (rows, cols), cols a multiple of 32):
- bits int32 [N_pad, K_pad / 32]: bit b of word w of row r is set iff W[r, 32 w + b] is nonzero;
- values [nnz] in the weight's dtype: the nonzeros tile by tile (row-major tile order), row-major inside
  a tile;
- tile_offsets int32 [T + 1]: index into values of each tile's first nonzero, then nnz.
Cost: 1 bit per position plus the values, against Tiled-CSL's 4 bytes per nonzero.

Chunked CSR (for kernels that work per nonzero instead of rebuilding tiles; `tile` = (chunks per row, chunk)):
- each row's nonzeros in column order, cut greedily into chunks of at most `chunk` (32) entries whose
  columns lie in [base, base + 256); a short chunk is filled with padding entries (value bits all zero,
  offset 0), and every row has the same number of chunks (short rows end in all-padding chunks);
- within a chunk the entries may be in any order: the encoder writes them in column order, and
  `spread_banks` reorders them for the kernel that gathers x from shared memory;
- values [N, chunks * chunk] in the weight's dtype; offsets [N, chunks * chunk] uint8 (column - base);
  bases [N, chunks] int32 (each chunk's first column).
Cost: 3 bytes per nonzero (16-bit values) plus the padding and 4 bytes per chunk; no shape padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

TILED_CSL_TILE = (128, 64)
FORMATS = ("tiled_csl", "bitmap", "chunked_csr")
# the bundle tensors of each format, named `<param>.<format>.<part>`
PARTS = {"tiled_csl": ("entries", "tile_offsets"), "bitmap": ("bits", "values", "tile_offsets"),
         "chunked_csr": ("values", "offsets", "bases")}


class SparseFormatError(ValueError):
    """An encoding that cannot hold the weight, or encoded tensors that do not fit their description."""


@dataclass
class SparseWeight:
    """One encoded weight: the format's tensors (by part name) and what a decoder needs to rebuild it."""

    format: str
    shape: tuple[int, int]             # [N, K] of the weight
    padded_shape: tuple[int, int]      # [N, K] rounded up to the tile
    tile: tuple[int, int]              # tile rows, tile columns
    nnz: int                           # nonzero positions (padding entries not counted)
    dtype: str                         # the weight's dtype ("float16", ...): Tiled-CSL's 16 bits are in it
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def meta(self) -> dict:
        """The facts the bundle manifest records beside the tensors."""
        return {"format": self.format, "shape": list(self.shape), "padded_shape": list(self.padded_shape),
                "tile": list(self.tile), "nnz": self.nnz, "dtype": self.dtype,
                "density": self.nnz / max(1, math.prod(self.shape)), "bytes": self.nbytes}


def tensor_name(param: str, fmt: str, part: str) -> str:
    return f"{param}.{fmt}.{part}"


def split_operands(meta: dict, operands: list):
    """A sparse linear's operands after x — (part..., bias?, residual?) — as ({part name: operand}, [the
    operands after the parts]) (reference_ops.linear_operands tells the bias and the residual apart)."""
    names = PARTS[meta["format"]]
    return dict(zip(names, operands[:len(names)])), list(operands[len(names):])


def _dtype_name(weight: torch.Tensor) -> str:
    return str(weight.dtype).removeprefix("torch.")


def _padded(weight: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    n, k = weight.shape
    pn, pk = -n % tile[0], -k % tile[1]
    return torch.nn.functional.pad(weight, (0, pk, 0, pn)) if pn or pk else weight


def _bits16(weight: torch.Tensor) -> torch.Tensor:
    """The 16-bit patterns of a float16/bfloat16 tensor, as int32 in [0, 65535]."""
    if weight.element_size() != 2 or not weight.is_floating_point():
        raise SparseFormatError(f"Tiled-CSL holds 16-bit floats; got {weight.dtype} (use the bitmap format, "
                                f"or compile in float16/bfloat16)")
    return weight.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF


def _nonzero_bits(weight: torch.Tensor) -> torch.Tensor:
    """Positions whose bits are not all zero (so -0.0 counts as a value to keep)."""
    itemsize = weight.element_size()
    as_int = {2: torch.int16, 4: torch.int32, 8: torch.int64}[itemsize]
    return weight.contiguous().view(as_int) != 0


def _check_2d(weight: torch.Tensor, what: str) -> None:
    if weight.dim() != 2:
        raise SparseFormatError(f"{what} encodes 2-D weights [N, K]; got shape {tuple(weight.shape)}")


# --- Tiled-CSL ---------------------------------------------------------------------------------------

def _swizzle_columns(rows: int, cols: int) -> torch.Tensor:
    """[rows, cols] column index of each swizzled slot: slot (r, c') holds column c' ^ ((r % 8) << 3)."""
    r = torch.arange(rows)[:, None]
    c = torch.arange(cols)[None, :]
    return c ^ ((r % 8) << 3)


def encode_tiled_csl(weight: torch.Tensor) -> SparseWeight:
    """W [N, K] (float16/bfloat16) -> Tiled-CSL entries and tile_offsets (layout in the module docstring)."""
    _check_2d(weight, "Tiled-CSL")
    tr, tc = TILED_CSL_TILE
    n, k = weight.shape
    bits = _padded(_bits16(weight), TILED_CSL_TILE)                            # [Np, Kp] int32
    np_, kp = bits.shape
    ti, tj = np_ // tr, kp // tc
    tiles = bits.view(ti, tr, tj, tc).permute(0, 2, 1, 3).reshape(ti * tj, tr, tc)   # [T, 128, 64]
    # slot (r, c') of a swizzled tile holds column c' ^ ((r % 8) << 3); flattened, a slot's index is its location
    swizzled = tiles.gather(2, _swizzle_columns(tr, tc).expand(ti * tj, tr, tc)).reshape(ti * tj, tr * tc)
    present = swizzled != 0                                                     # [T, 8192]
    counts = present.sum(1)
    pad = (-counts) % 4
    zero_rank = (~present).cumsum(1) - 1                                        # among a tile's zero slots
    chosen = present | (~present & (zero_rank < pad[:, None]))
    tile_index, location = chosen.nonzero(as_tuple=True)                       # tile-major, location ascending
    entries = (location.to(torch.int32) << 16) | swizzled[tile_index, location]
    per_tile = (counts + pad) // 4
    offsets = torch.zeros(ti * tj + 2, dtype=torch.int32)
    offsets[1:-1] = per_tile.cumsum(0).to(torch.int32)
    offsets[-1] = offsets[-2]
    return SparseWeight("tiled_csl", (n, k), (np_, kp), TILED_CSL_TILE, int(counts.sum()), _dtype_name(weight),
                        {"entries": entries.to(torch.int32), "tile_offsets": offsets})


def decode_tiled_csl(entries: torch.Tensor, tile_offsets: torch.Tensor, shape: tuple[int, int],
                     padded_shape: tuple[int, int], dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """Rebuild W [N, K] in `dtype` (float16/bfloat16) from the layout alone."""
    tr, tc = TILED_CSL_TILE
    np_, kp = padded_shape
    if np_ % tr or kp % tc or np_ < shape[0] or kp < shape[1]:
        raise SparseFormatError(f"Tiled-CSL padded shape {padded_shape} is not a tile multiple covering {shape}")
    ti, tj = np_ // tr, kp // tc
    offsets = tile_offsets.to(torch.int64)
    if offsets.numel() != ti * tj + 2 or int(offsets[-1]) * 4 != entries.numel():
        raise SparseFormatError(f"Tiled-CSL tile_offsets ({offsets.numel()}, total {int(offsets[-1])}x4) do not "
                                f"match {ti * tj} tiles and {entries.numel()} entries")
    counts = (offsets[1:-1] - offsets[:-2]) * 4
    tile_index = torch.repeat_interleave(torch.arange(ti * tj), counts)
    words = entries.to(torch.int64) & 0xFFFFFFFF
    location = words >> 16
    if entries.numel() and int(location.max()) >= tr * tc:
        raise SparseFormatError("Tiled-CSL entry location outside its 128x64 tile")
    swizzled = torch.zeros(ti * tj, tr * tc, dtype=torch.int64)
    swizzled[tile_index, location] = words & 0xFFFF
    swizzled = swizzled.view(ti * tj, tr, tc)
    tiles = torch.empty_like(swizzled).scatter_(2, _swizzle_columns(tr, tc).expand(ti * tj, tr, tc), swizzled)
    dense = tiles.view(ti, tj, tr, tc).permute(0, 2, 1, 3).reshape(np_, kp)
    signed = ((dense ^ 0x8000) - 0x8000).to(torch.int16)                      # two's complement 16-bit
    return signed.view(dtype)[: shape[0], : shape[1]].contiguous()


# --- bitmap ------------------------------------------------------------------------------------------

def check_bitmap_tile(tile: tuple[int, int]) -> None:
    rows, cols = tile
    if rows < 1 or cols < 32 or cols % 32:
        raise SparseFormatError(f"bitmap tile {tile}: columns must be a positive multiple of 32")


def encode_bitmap(weight: torch.Tensor, tile: tuple[int, int]) -> SparseWeight:
    """W [N, K] (any float dtype) -> bitmap bits, packed values and tile_offsets."""
    _check_2d(weight, "the bitmap format")
    check_bitmap_tile(tile)
    tr, tc = tile
    n, k = weight.shape
    padded = _padded(weight.contiguous(), tile)
    np_, kp = padded.shape
    present = _nonzero_bits(padded)                                             # [Np, Kp]
    weights_of_bits = torch.tensor([1 << b for b in range(32)], dtype=torch.int64)
    words = (present.view(np_, kp // 32, 32).to(torch.int64) * weights_of_bits).sum(-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)   # uint32 bits as int32
    ti, tj = np_ // tr, kp // tc
    tiled_present = present.view(ti, tr, tj, tc).permute(0, 2, 1, 3)            # [Ti, Tj, tr, tc]
    values = padded.view(ti, tr, tj, tc).permute(0, 2, 1, 3)[tiled_present]     # tile order, row-major in tile
    offsets = torch.zeros(ti * tj + 1, dtype=torch.int64)
    offsets[1:] = tiled_present.reshape(ti * tj, -1).sum(1).cumsum(0)
    if int(offsets[-1]) >= 1 << 31:
        raise SparseFormatError(f"bitmap: {int(offsets[-1])} nonzeros do not fit int32 offsets")
    return SparseWeight("bitmap", (n, k), (np_, kp), (tr, tc), int(offsets[-1]), _dtype_name(weight),
                        {"bits": words, "values": values.contiguous(), "tile_offsets": offsets.to(torch.int32)})


def decode_bitmap(bits: torch.Tensor, values: torch.Tensor, tile_offsets: torch.Tensor, shape: tuple[int, int],
                  padded_shape: tuple[int, int], tile: tuple[int, int]) -> torch.Tensor:
    """Rebuild W [N, K] (the values' dtype) from bits, values and tile_offsets."""
    check_bitmap_tile(tile)
    tr, tc = tile
    np_, kp = padded_shape
    if np_ % tr or kp % tc or np_ < shape[0] or kp < shape[1] or tuple(bits.shape) != (np_, kp // 32):
        raise SparseFormatError(f"bitmap bits {tuple(bits.shape)} / padded shape {padded_shape} do not fit tile "
                                f"{tile} and shape {shape}")
    ti, tj = np_ // tr, kp // tc
    if tile_offsets.numel() != ti * tj + 1 or int(tile_offsets[-1]) != values.numel():
        raise SparseFormatError(f"bitmap tile_offsets ({tile_offsets.numel()}, total {int(tile_offsets[-1])}) do "
                                f"not match {ti * tj} tiles and {values.numel()} values")
    shifts = torch.arange(32, dtype=torch.int64)
    present = ((bits.to(torch.int64)[..., None] >> shifts) & 1).bool().view(np_, kp)
    tiled_present = present.view(ti, tr, tj, tc).permute(0, 2, 1, 3)
    counts = tiled_present.reshape(ti * tj, -1).sum(1)
    if not torch.equal(counts, (tile_offsets[1:] - tile_offsets[:-1]).to(torch.int64)):
        raise SparseFormatError("bitmap tile_offsets disagree with the bits' per-tile counts")
    tiles = torch.zeros(ti, tj, tr, tc, dtype=values.dtype)
    tiles[tiled_present] = values
    return tiles.permute(0, 2, 1, 3).reshape(np_, kp)[: shape[0], : shape[1]].contiguous()


# --- chunked CSR -------------------------------------------------------------------------------------

CHUNKED_CSR_CHUNK = 32       # entries per chunk
CHUNKED_CSR_SPAN = 256       # columns a chunk reaches from its base (8-bit offsets)


ENCODE_BLOCK_ELEMENTS = 1 << 22     # rows encoded together: small temporaries, reused instead of paged in anew


def encode_chunked_csr(weight: torch.Tensor, chunk: int = CHUNKED_CSR_CHUNK) -> SparseWeight:
    """W [N, K] (any float dtype) -> chunked-CSR values, offsets and bases (layout in the module docstring).

    Chunks are cut greedily along each row: a chunk starts at the row's next nonzero (its base) and takes
    up to `chunk` nonzeros whose columns are < base + 256; a short chunk is filled with padding entries.
    Rows are encoded in blocks of about ENCODE_BLOCK_ELEMENTS positions; a row with fewer chunks than the
    most any row has ends in padding chunks (base 0, offsets 0, values 0)."""
    _check_2d(weight, "chunked CSR")
    if chunk < 1:
        raise SparseFormatError(f"chunked CSR: chunk must be positive, got {chunk}")
    n, k = weight.shape
    weight = weight.contiguous()
    rows = max(1, ENCODE_BLOCK_ELEMENTS // max(k, 1))
    blocks = [_chunked_csr_rows(weight[r:r + rows], chunk) for r in range(0, n, rows)] or \
        [_chunked_csr_rows(weight, chunk)]
    chunks = max(base.shape[1] for _, _, base, _ in blocks)

    def widen(t: torch.Tensor, width: int) -> torch.Tensor:            # zero padding chunks on the right
        return torch.nn.functional.pad(t, (0, width - t.shape[1]))
    values = torch.cat([widen(v, chunks * chunk) for v, _, _, _ in blocks])
    offsets = torch.cat([widen(o, chunks * chunk) for _, o, _, _ in blocks])
    bases = torch.cat([widen(b, chunks) for _, _, b, _ in blocks])
    nnz = sum(count for _, _, _, count in blocks)
    return SparseWeight("chunked_csr", (n, k), (n, k), (chunks, chunk), nnz, _dtype_name(weight),
                        {"values": values, "offsets": offsets, "bases": bases})


def _chunked_csr_rows(weight: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Rows W [n, K] -> (values [n, T * chunk], offsets uint8 [n, T * chunk], bases int32 [n, T], nonzeros), T the
    most chunks any of these rows needs (at least 1)."""
    n, k = weight.shape
    present = _nonzero_bits(weight)                                             # [N, K]
    per_row = present.sum(1)                                                    # [N]
    widest = int(per_row.max()) if n else 0
    rows, columns = present.nonzero(as_tuple=True)                              # row-major: columns ascend
    device = weight.device
    starts = torch.zeros(n + 1, dtype=torch.int64, device=device)
    starts[1:] = per_row.cumsum(0)
    beyond = k + CHUNKED_CSR_SPAN                                               # past every chunk's reach
    sorted_columns = torch.full((n, widest + 1), beyond, dtype=torch.int64, device=device)     # [N, Z + 1]
    sorted_columns[rows, torch.arange(rows.numel(), device=device) - starts[rows]] = columns
    position = torch.zeros(n, dtype=torch.int64, device=device)                              # next nonzero of each row
    chunk_starts, chunk_ends, bases = [], [], []
    while bool((position < per_row).any()) or not bases:
        active = position < per_row
        base = sorted_columns.gather(1, position[:, None])[:, 0]                # [N]
        reach = torch.searchsorted(sorted_columns, (base + CHUNKED_CSR_SPAN)[:, None])[:, 0]
        end = torch.minimum(torch.minimum(position + chunk, reach), per_row)
        chunk_starts.append(position)
        chunk_ends.append(torch.where(active, end, position))
        bases.append(torch.where(active, base, 0))
        position = chunk_ends[-1]
    first = torch.stack(chunk_starts, 1)[..., None]                             # [N, T, 1]
    index = first + torch.arange(chunk, device=device)                                         # [N, T, chunk]
    real = index < torch.stack(chunk_ends, 1)[..., None]
    base = torch.stack(bases, 1)                                                # [N, T]
    column = sorted_columns.gather(1, index.clamp(max=widest).view(n, -1)).view(index.shape)
    column = torch.where(real, column, base[..., None])                         # padding: at the base
    values = weight.gather(1, column.clamp(max=max(k - 1, 0)).view(n, -1)).view(index.shape) if k else \
        torch.zeros(index.shape, dtype=weight.dtype, device=device)
    values = torch.where(real, values, torch.zeros((), dtype=weight.dtype, device=device))
    chunks = base.shape[1]
    return (values.reshape(n, chunks * chunk), (column - base[..., None]).to(torch.uint8).reshape(n, chunks * chunk),
            base.to(torch.int32), int(per_row.sum()))


def spread_banks(weight: SparseWeight, groups: int = 8) -> SparseWeight:
    """The chunked-CSR weight with each chunk's entries reordered by their column's class (column mod `groups`),
    stable within a class. For codegen/kernels/chunked_csr_xshared.py: its gather instruction j reads entries
    j, j + 4, ..., j + 28 of a chunk, one a thread of eight, from x in shared memory, where a column of 8 rows
    takes 16 bytes, so columns equal mod 8 share a bank group and two such entries in one instruction cost a
    shared-memory cycle more. Sorted by class, the ~4 entries of each class sit side by side and one instruction's
    eight entries come from up to eight classes (H100, 8 rows: 15-18% faster, docs/perf/2026-12-07-gluon-xshared.md).
    Decodes to the same weight; the sums differ only by the order of float additions."""
    if weight.format != "chunked_csr":
        raise SparseFormatError(f"spread_banks reorders chunked CSR entries, got a {weight.format} weight")
    values, offsets, bases = (weight.tensors[p] for p in ("values", "offsets", "bases"))
    chunk = weight.tile[1]
    n, slots = values.shape
    chunks = slots // chunk if chunk else 0
    columns = bases.to(torch.int64).repeat_interleave(chunk, dim=1) + offsets.to(torch.int64)   # [N, slots]
    group = (columns % groups).view(n, chunks, chunk)
    device = values.device
    order = torch.sort(group * chunk + torch.arange(chunk, device=device), dim=2).indices       # stable by class
    pick = (order + torch.arange(chunks, device=device)[None, :, None] * chunk).view(n, slots)
    tensors = {"values": values.gather(1, pick), "offsets": offsets.gather(1, pick), "bases": bases}
    return SparseWeight(weight.format, weight.shape, weight.padded_shape, weight.tile, weight.nnz, weight.dtype,
                        tensors)


def decode_chunked_csr(values: torch.Tensor, offsets: torch.Tensor, bases: torch.Tensor,
                       shape: tuple[int, int], chunk: int) -> torch.Tensor:
    """Rebuild W [N, K] (the values' dtype): entry e of row r sits at column bases[r, e // chunk] + offsets[r, e];
    entries whose bits are all zero are padding."""
    n, k = shape
    if bases.dim() != 2 or bases.shape[0] != n or tuple(values.shape) != (n, bases.shape[1] * chunk) \
            or offsets.shape != values.shape or offsets.dtype != torch.uint8:
        raise SparseFormatError(f"chunked CSR values {tuple(values.shape)}, offsets {tuple(offsets.shape)} "
                                f"{offsets.dtype}, bases {tuple(bases.shape)} do not fit shape {shape} and "
                                f"chunk {chunk} (values/offsets [N, chunks * chunk], offsets uint8)")
    column = (bases.to(torch.int64).repeat_interleave(chunk, dim=1) + offsets.to(torch.int64))   # [N, L]
    real = _nonzero_bits(values)
    if bool((real & ((column < 0) | (column >= k))).any()):
        raise SparseFormatError(f"chunked CSR entry outside the weight's {k} columns")
    dense = torch.zeros(shape, dtype=values.dtype)
    row = torch.arange(n)[:, None].expand_as(column)
    dense[row[real], column[real]] = values[real]
    return dense


# --- shared ------------------------------------------------------------------------------------------

def encode(weight: torch.Tensor, fmt: str, tile: tuple[int, int] | None = None,
           spread: bool = False) -> SparseWeight:
    """weight [N, K] in `fmt` (tile: the bitmap's tile, chunked CSR's (chunks, chunk)); spread: chunked CSR's entries
    reordered by spread_banks."""
    if spread and fmt != "chunked_csr":
        raise SparseFormatError(f"spread applies to chunked_csr, not {fmt}")
    if fmt == "tiled_csl":
        return encode_tiled_csl(weight)
    if fmt == "bitmap":
        if tile is None:
            raise SparseFormatError("the bitmap format needs a tile shape")
        return encode_bitmap(weight, tile)
    if fmt == "chunked_csr":
        encoded = encode_chunked_csr(weight, tile[1] if tile else CHUNKED_CSR_CHUNK)
        return spread_banks(encoded) if spread else encoded
    raise SparseFormatError(f"unknown sparse format {fmt!r}; known: {', '.join(FORMATS)}")


def decode(meta: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rebuild a weight from its description (SparseWeight.meta()) and its tensors by part name."""
    shape, padded = tuple(meta["shape"]), tuple(meta["padded_shape"])
    if meta["format"] == "tiled_csl":
        return decode_tiled_csl(tensors["entries"], tensors["tile_offsets"], shape, padded,
                                getattr(torch, meta["dtype"]))
    if meta["format"] == "bitmap":
        return decode_bitmap(tensors["bits"], tensors["values"], tensors["tile_offsets"], shape, padded,
                             tuple(meta["tile"]))
    if meta["format"] == "chunked_csr":
        return decode_chunked_csr(tensors["values"], tensors["offsets"], tensors["bases"], shape, meta["tile"][1])
    raise SparseFormatError(f"unknown sparse format {meta['format']!r}")


def chunked_csr_chunks(k: int, density: float, chunk: int = CHUNKED_CSR_CHUNK) -> int:
    """Expected chunks per row of a chunked-CSR weight with K columns at a density: a chunk holds `chunk`
    entries, or fewer where 256 columns hold fewer nonzeros; one more for rows above the mean."""
    per_chunk = min(chunk, max(1.0, CHUNKED_CSR_SPAN * density))
    return math.ceil(density * k / per_chunk) + 1


def encoded_bytes(fmt: str, shape: tuple[int, int], density: float, tile: tuple[int, int],
                  value_bytes: int = 2) -> float:
    """Expected bytes of an encoding at a density (what the dataflow's cost model reads)."""
    n, k = shape
    np_, kp = math.ceil(n / tile[0]) * tile[0], math.ceil(k / tile[1]) * tile[1]
    tiles = (np_ // tile[0]) * (kp // tile[1])
    if fmt == "tiled_csl":
        return 4 * (density * n * k + 1.5 * tiles) + 4 * (tiles + 2)
    if fmt == "bitmap":
        return np_ * kp / 8 + value_bytes * density * n * k + 4 * (tiles + 1)
    if fmt == "chunked_csr":
        return n * chunked_csr_chunks(k, density, tile[1]) * (tile[1] * (value_bytes + 1) + 4)
    raise SparseFormatError(f"unknown sparse format {fmt!r}")
