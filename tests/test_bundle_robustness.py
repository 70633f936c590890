"""Bundles that are missing, truncated, corrupted, of another version or hostile give one clear BundleError each
(DESIGN.md §7, §10; docs/bundle-format.md). Also: members are stored and 64-byte aligned, weights are views of
the mapped file, and manifest and plan survive a JSON round trip.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

import fdpp
from fdpp.runtime.bundle import ALIGNMENT, MANIFEST, PLAN, read_bundle
from fdpp.runtime.errors import BundleError
from fdpp.runtime.schema import Manifest, Plan

from helpers import shared_llama

LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_llama(tmp_path_factory)[1]


@pytest.fixture
def copy(bundle, tmp_path) -> Path:
    """A private copy of the bundle that a test may damage."""
    return Path(shutil.copy(bundle, tmp_path / "model.fdpp"))


def load_error(path: Path) -> str:
    """fdpp.load must raise BundleError (nothing else) with a one-line message; returns the message with the
    path replaced by <path>, so that words of the test's directory name cannot satisfy a check."""
    with pytest.raises(BundleError) as info:
        fdpp.load(str(path))
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    return message.replace(str(path), "<path>")


def data_span(path: Path, name: str) -> tuple[int, int]:
    """Offset and size of a member's bytes in the file, read from its local header (independently of fdpp)."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
    assert fields[0] == 0x04034B50
    return info.header_offset + LOCAL_HEADER.size + fields[9] + fields[10], info.file_size


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def read_members(path: Path) -> tuple[dict[str, bytes], dict]:
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    return members, json.loads(members.pop(MANIFEST))


def write_zip(path: Path, members: dict[str, bytes], compressed: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in compressed else zipfile.ZIP_STORED
            z.writestr(info, data)
    return path


def rebuilt(src: Path, dst: Path, edit: Callable[[dict[str, bytes], dict], None], rehash: bool = True,
            compressed: tuple[str, ...] = ()) -> Path:
    """Rewrite a bundle with `edit(members, manifest)` applied; with `rehash`, the manifest's digests are
    recomputed for the members it lists, as a deliberate forger would."""
    members, manifest = read_members(src)
    edit(members, manifest)
    if rehash:
        for name in manifest.get("members", {}):
            if name in members:
                manifest["members"][name] = hashlib.sha256(members[name]).hexdigest()
    return write_zip(dst, {**members, MANIFEST: json.dumps(manifest).encode()}, compressed)


def weights_member(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return next(n for n in z.namelist() if n.startswith("weights/"))


# --- the good bundle -------------------------------------------------------------------------


def test_good_bundle_loads(bundle):
    model = fdpp.load(str(bundle))
    out = model.generate([[1, 2, 3]], max_new_tokens=2)
    assert len(out.token_ids[0]) >= 1


def test_members_are_stored_and_aligned(bundle):
    with zipfile.ZipFile(bundle) as z:
        infos = z.infolist()
    assert {MANIFEST, PLAN} <= {i.filename for i in infos}
    assert any(i.filename.startswith("weights/") for i in infos)
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED, info.filename
        assert info.compress_size == info.file_size, info.filename
        start, _ = data_span(bundle, info.filename)
        assert start % ALIGNMENT == 0, (info.filename, start)


def test_weights_are_views_of_the_mapped_file(bundle):
    b = read_bundle(bundle)
    assert b.weights
    for name, tensor in b.weights.items():
        view = b.members[b.manifest.weights[name]["member"]]
        base = ctypes.addressof(ctypes.c_char.from_buffer(view))
        nbytes = tensor.numel() * tensor.element_size()
        assert base <= tensor.data_ptr() and tensor.data_ptr() + nbytes <= base + len(view), name
    # A write through a tensor shows in the mapped member: same memory, not a copy. The mapping is
    # private, so the file itself does not change.
    before = hashlib.sha256(bundle.read_bytes()).hexdigest()
    name, tensor = next((k, v) for k, v in b.weights.items() if v.is_floating_point() and v.numel())
    view = b.members[b.manifest.weights[name]["member"]]
    offset = tensor.data_ptr() - ctypes.addressof(ctypes.c_char.from_buffer(view))
    tensor.view(-1)[0] = 1234.5
    assert struct.unpack_from("<f", view, offset)[0] == 1234.5
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == before


def test_model_runs_on_the_mapped_weights(bundle):
    model = fdpp.load(str(bundle))
    for name, tensor in model.executor.weights.items():
        assert tensor.data_ptr() == model.bundle.weights[name].data_ptr(), name


def test_manifest_and_plan_round_trip_through_json(bundle):
    members, manifest_json = read_members(bundle)
    plan_json = json.loads(members[PLAN])
    manifest = Manifest.from_json(manifest_json)
    plan = Plan.from_json(plan_json)
    assert json.loads(json.dumps(manifest.to_json())) == manifest_json
    assert json.loads(json.dumps(plan.to_json())) == plan_json
    assert Manifest.from_json(json.loads(json.dumps(manifest.to_json()))) == manifest
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    b = read_bundle(bundle)
    assert b.manifest == manifest and b.plan == plan
    assert set(manifest.members) == set(members), "every member but the manifest has a digest"
    for name, digest in manifest.members.items():
        assert hashlib.sha256(members[name]).hexdigest() == digest, name


# --- files that are not bundles -----------------------------------------------------------------


def test_missing_file(tmp_path):
    assert "does not exist" in load_error(tmp_path / "nope.fdpp")


def test_directory(tmp_path):
    load_error(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "zero.fdpp"
    path.write_bytes(b"")
    assert "empty" in load_error(path)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.fdpp"
    path.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
                     .numpy().tobytes())
    assert "not a readable .fdpp bundle" in load_error(path)


@pytest.mark.parametrize("keep", ["10", "half", "all-but-100", "all-but-1"])
def test_truncated_file(copy, keep):
    size = copy.stat().st_size
    length = {"10": 10, "half": size // 2, "all-but-100": size - 100, "all-but-1": size - 1}[keep]
    with open(copy, "r+b") as f:
        f.truncate(length)
    message = load_error(copy)
    assert "truncated" in message and "recompile" in message


# --- corrupted members ----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_flipped_byte_in_weights(copy, where):
    member = weights_member(copy)
    start, size = data_span(copy, member)
    flip_byte(copy, {"start": start + 10, "middle": start + size // 2, "end": start + size - 1}[where])
    message = load_error(copy)
    assert member in message and "corrupted" in message


def test_flipped_byte_in_plan(copy):
    start, size = data_span(copy, PLAN)
    flip_byte(copy, start + size // 2)
    message = load_error(copy)
    assert PLAN in message and "corrupted" in message


def test_member_listed_but_missing(bundle, tmp_path):
    member = weights_member(bundle)
    path = rebuilt(bundle, tmp_path / "b.fdpp", lambda m, man: m.pop(member))
    assert member in load_error(path) and "missing" in load_error(path)


# --- manifests ----------------------------------------------------------------------------------


def test_wrong_format_version(bundle, tmp_path):
    path = rebuilt(bundle, tmp_path / "v99.fdpp", lambda m, man: man.update(format_version=99))
    message = load_error(path)
    assert "99" in message and "not supported" in message and "recompile" in message


def test_manifest_missing(bundle, tmp_path):
    members, _ = read_members(bundle)
    path = write_zip(tmp_path / "b.fdpp", members)
    assert MANIFEST in load_error(path)


def test_manifest_not_json(bundle, tmp_path):
    members, _ = read_members(bundle)
    path = write_zip(tmp_path / "b.fdpp", {**members, MANIFEST: b"{\"format_version\": 1, \xff"})
    assert "not valid JSON" in load_error(path)


def test_manifest_missing_fields(bundle, tmp_path):
    path = rebuilt(bundle, tmp_path / "b.fdpp", lambda m, man: man.pop("envelope"))
    assert "missing fields" in load_error(path)


@pytest.mark.parametrize("field, value", [
    ("members", ["plan.json"]),
    ("weights", {"model.norm.weight": "weights/shard-00001.safetensors"}),
    ("envelope", "big"),
    ("format_version", "1"),
])
def test_manifest_with_wrong_types(bundle, tmp_path, field, value):
    path = rebuilt(bundle, tmp_path / "b.fdpp", lambda m, man: man.update({field: value}), rehash=False)
    load_error(path)


def test_plan_with_unknown_op(bundle, tmp_path):
    def edit(members, manifest):
        plan = json.loads(members[PLAN])
        plan["steps"][0]["op"] = "fft"
        members[PLAN] = json.dumps(plan).encode()
    assert PLAN in load_error(rebuilt(bundle, tmp_path / "b.fdpp", edit))


# --- members that should not be there -------------------------------------------------------


def test_unlisted_member(copy):
    with zipfile.ZipFile(copy, "a") as z:
        z.writestr("kernels/extra.cubin", b"\x7fELF not ours")
    message = load_error(copy)
    assert "does not list" in message and "kernels/extra.cubin" in message


def test_compressed_member(bundle, tmp_path):
    path = rebuilt(bundle, tmp_path / "b.fdpp", lambda m, man: None, compressed=(PLAN,))
    message = load_error(path)
    assert "compressed" in message and PLAN in message


def _hostile_names(tmp_path: Path) -> dict[str, Path]:
    """Member name -> where a careless extractor run in tmp_path/run would write it."""
    absolute = tmp_path / "absolute-target.txt"
    return {"../evil.txt": tmp_path / "evil.txt", "../../evil2.txt": tmp_path.parent / "evil2.txt",
            str(absolute): absolute, "weights/../../evil3.txt": tmp_path / "evil3.txt"}


@pytest.mark.parametrize("listed", [False, True], ids=["unlisted", "listed-with-digest"])
def test_hostile_member_names(bundle, tmp_path, monkeypatch, listed):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(run_dir)
    names = _hostile_names(tmp_path)

    def edit(members, manifest):
        for name in names:
            members[name] = b"owned"
            if listed:
                manifest["members"][name] = ""

    path = rebuilt(bundle, run_dir / "hostile.fdpp", edit)
    with zipfile.ZipFile(path) as z:
        assert set(names) <= set(z.namelist())
    load_error(path)
    for target in names.values():
        assert not target.exists(), target
    assert sorted(os.listdir(run_dir)) == ["hostile.fdpp"]


# --- forged bundles: consistent digests, damaged content -------------------------------------


def _edit_safetensors(edit_header: Callable[[dict], dict | bytes]) -> Callable:
    def edit(members, manifest):
        name = next(n for n in members if n.startswith("weights/"))
        data = members[name]
        (size,) = struct.unpack_from("<Q", data, 0)
        header = edit_header(json.loads(data[8:8 + size]))
        raw = header if isinstance(header, bytes) else json.dumps(header).encode()
        members[name] = struct.pack("<Q", len(raw)) + raw + data[8 + size:]
    return edit


def _grow_first_tensor(header: dict) -> dict:
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [d * 2 for d in header[key]["shape"]]
    return header


def _unknown_dtype(header: dict) -> dict:
    key = next(k for k in header if k != "__metadata__")
    header[key]["dtype"] = "F8_E4M3"
    return header


@pytest.mark.parametrize("edit_header", [
    lambda h: b"{not json",
    _grow_first_tensor,
    _unknown_dtype,
], ids=["header-not-json", "shape-larger-than-data", "unknown-dtype"])
def test_forged_weights_header(bundle, tmp_path, edit_header):
    load_error(rebuilt(bundle, tmp_path / "b.fdpp", _edit_safetensors(edit_header)))


def test_load_leaves_the_bundle_unchanged(copy):
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    model = fdpp.load(str(copy))
    model.generate([[5, 6, 7]], max_new_tokens=2)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
