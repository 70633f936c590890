"""Read a .fdpp bundle: a zip archive of stored (uncompressed), 64-byte-aligned members.

Weights are memory-mapped: each tensor is a view into the mapped file, not a copy. Every member's
sha256 is checked against the manifest before use. Anything wrong raises BundleError with one line
that says what is wrong and what to do. No pickle is read anywhere.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fdpp.runtime.errors import BundleError
from fdpp.runtime.schema import SUPPORTED_FORMAT_VERSIONS, Manifest, Plan

MANIFEST = "manifest.json"
PLAN = "plan.json"
TOKENIZER = "tokenizer/tokenizer.json"
KERNELS_DIR = "kernels/"                 # compiled code objects: kernels/<name>.<cubin|ptx|hsaco>
ALIGNMENT = 64
_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")       # zip local file header, 30 bytes
_LOCAL_MAGIC = 0x04034B50
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "U32": getattr(torch, "uint32", torch.int32),
}
_RECOMPILE = "recompile it with `fdcc compile`"


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    plan: Plan
    weights: dict[str, torch.Tensor]             # name -> tensor viewing the mapped file
    tokenizer_json: str | None
    members: dict[str, memoryview] = field(repr=False, default_factory=dict)

    def member_bytes(self, name: str) -> bytes:
        return bytes(self.members[name])


def _data_span(mapped: mmap.mmap, info: zipfile.ZipInfo) -> tuple[int, int]:
    """Offset and size of a stored member's bytes, read from its local header."""
    offset = info.header_offset
    if offset + _LOCAL_HEADER.size > len(mapped):
        raise BundleError(f"member {info.filename} lies past the end of the file: the bundle is truncated; {_RECOMPILE}")
    fields = _LOCAL_HEADER.unpack_from(mapped, offset)
    if fields[0] != _LOCAL_MAGIC:
        raise BundleError(f"member {info.filename} has a damaged header: the bundle is corrupted; {_RECOMPILE}")
    start = offset + _LOCAL_HEADER.size + fields[9] + fields[10]
    if start + info.file_size > len(mapped):
        raise BundleError(f"member {info.filename} is cut short: the bundle is truncated; {_RECOMPILE}")
    return start, info.file_size


def _sha256(view: memoryview) -> str:
    h = hashlib.sha256()
    step = 1 << 26
    for i in range(0, len(view), step):
        h.update(view[i:i + step])
    return h.hexdigest()


def _json_member(views: dict[str, memoryview], name: str) -> dict:
    if name not in views:
        raise BundleError(f"the bundle has no {name}: it is not a complete .fdpp file; {_RECOMPILE}")
    try:
        return json.loads(bytes(views[name]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{name} in the bundle is not valid JSON ({e.__class__.__name__}); {_RECOMPILE}") from None


def _safetensors_views(view: memoryview, name: str) -> dict[str, torch.Tensor]:
    """Parse a safetensors member (8-byte little-endian header size, JSON header, data) without copying."""
    if len(view) < 8:
        raise BundleError(f"weights member {name} is too short to be safetensors; {_RECOMPILE}")
    (header_size,) = struct.unpack_from("<Q", view, 0)
    if 8 + header_size > len(view):
        raise BundleError(f"weights member {name} has a damaged safetensors header; {_RECOMPILE}")
    try:
        header = json.loads(bytes(view[8:8 + header_size]))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BundleError(f"weights member {name} has a damaged safetensors header; {_RECOMPILE}") from None
    if not isinstance(header, dict):
        raise BundleError(f"weights member {name} has a damaged safetensors header; {_RECOMPILE}")
    base = 8 + header_size
    tensors = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            raise BundleError(f"weights member {name}: tensor {key} has unsupported dtype {meta['dtype']}")
        begin, end = meta["data_offsets"]
        count = 1
        for d in meta["shape"]:
            count *= int(d)
        if base + end > len(view) or not 0 <= begin <= end or end - begin != count * dtype.itemsize:
            raise BundleError(f"weights member {name}: tensor {key} does not fit its bytes; {_RECOMPILE}")
        flat = torch.frombuffer(view, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=base + begin) \
            if end > begin else torch.empty(0, dtype=dtype)
        tensors[key] = flat.view(meta["shape"])
    return tensors


def _check_manifest_types(manifest: Manifest) -> None:
    """The fields the reader walks must have the documented types; raises TypeError otherwise."""
    if not isinstance(manifest.members, dict) or not all(isinstance(v, str) for v in manifest.members.values()):
        raise TypeError("members must map member names to sha256 strings")
    if not isinstance(manifest.weights, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("member"), str) for v in manifest.weights.values()):
        raise TypeError("weights must map names to {member, shape, dtype}")
    if not isinstance(manifest.kernels, list) or not isinstance(manifest.target, dict):
        raise TypeError("kernels must be a list and target an object")


def read_bundle(path: str | os.PathLike, verify_hashes: bool = True) -> Bundle:
    """Open, check and map a bundle. Raises BundleError on any problem."""
    path = Path(path)
    if path.is_dir():
        raise BundleError(f"{path} is a directory, not a .fdpp bundle file")
    if not path.is_file():
        raise BundleError(f"no bundle at {path}: the file does not exist")
    if os.path.getsize(path) == 0:
        raise BundleError(f"{path} is empty; {_RECOMPILE}")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise BundleError(f"{path} is not a readable .fdpp bundle (truncated or not a zip archive); {_RECOMPILE}") from None
    for info in infos:
        name = info.filename
        if name.startswith(("/", "\\")) or "\\" in name or ".." in name.split("/") or ":" in name:
            raise BundleError(f"the bundle has a member with an unsafe name ({name!r}); it was not written by "
                              f"fdcc and is refused")
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)   # private: tensors may be written to
    whole = memoryview(mapped)
    views: dict[str, memoryview] = {}
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise BundleError(f"member {info.filename} is compressed; .fdpp members are stored so weights can be "
                              f"mapped — {_RECOMPILE}")
        start, size = _data_span(mapped, info)
        views[info.filename] = whole[start:start + size]

    raw = _json_member(views, MANIFEST)
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise BundleError(f"bundle format version {version!r} is not supported by this runtime (it reads "
                          f"{', '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}); recompile the model with this "
                          f"fdpp's `fdcc compile` or install the fdpp that wrote it")
    try:
        manifest = Manifest.from_json(raw)
        _check_manifest_types(manifest)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BundleError(f"manifest.json is missing fields or has wrong types ({e}); {_RECOMPILE}") from None

    for name, digest in manifest.members.items():
        if name not in views:
            raise BundleError(f"member {name} listed in the manifest is missing: the bundle is incomplete; {_RECOMPILE}")
        if verify_hashes and _sha256(views[name]) != digest:
            raise BundleError(f"member {name} is corrupted (sha256 does not match the manifest); {_RECOMPILE}")
    unlisted = set(views) - set(manifest.members) - {MANIFEST}
    if unlisted:
        raise BundleError(f"the bundle holds members the manifest does not list ({sorted(unlisted)[0]}…); "
                          f"it was altered after compilation; {_RECOMPILE}")

    try:
        plan = Plan.from_json(_json_member(views, PLAN))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"plan.json is missing fields or has wrong types ({e}); {_RECOMPILE}") from None

    weights: dict[str, torch.Tensor] = {}
    for member in sorted({w["member"] for w in manifest.weights.values()}):
        if member not in views:
            raise BundleError(f"weights member {member} is missing; {_RECOMPILE}")
        weights.update(_safetensors_views(views[member], member))
    missing = [w for w in manifest.weights if w not in weights]
    if missing:
        raise BundleError(f"weight {missing[0]} named in the manifest is not in the weights; {_RECOMPILE}")
    tokenizer_json = bytes(views[TOKENIZER]).decode("utf-8") if TOKENIZER in views else None
    return Bundle(path, manifest, plan, weights, tokenizer_json, views)
