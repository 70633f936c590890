"""Loading a bundle onto a GPU: the vendor and arch check, weights to device memory, code objects to kernels."""

from __future__ import annotations

from typing import Mapping

import torch

from fdpp.runtime.bundle import KERNELS_DIR, Bundle
from fdpp.runtime.errors import BundleError
from fdpp.runtime.kernel_binary import CompiledKernel
from fdpp.runtime.targets import targets_for_arch


def device_vendor_arch(device: torch.device) -> tuple[str, str]:
    """("cuda", "sm_90") or ("hip", "gfx942") for a torch GPU device."""
    if getattr(torch.version, "hip", None):
        return "hip", torch.cuda.get_device_properties(device).gcnArchName.split(":")[0]
    major, minor = torch.cuda.get_device_capability(device)
    return "cuda", f"sm_{major}{minor}"


def check_compatible(bundle: Bundle, device: torch.device) -> None:
    """Refuse a bundle whose code cannot run on this GPU, naming the targets that would."""
    target = bundle.manifest.target
    vendor, arch = device_vendor_arch(device)
    fits = ", ".join(targets_for_arch(vendor, arch)) or f"none in this fdpp's table (a {vendor} {arch} GPU)"
    if target["vendor"] != vendor:
        raise BundleError(f"this bundle was built for {target['name']} ({target['vendor']} {target['arch']}) but this "
                          f"GPU is {vendor} {arch}; recompile with --target {fits.split(',')[0]} "
                          f"(targets that fit this GPU: {fits})")
    if target["arch"] == arch:
        return
    newer_nvidia = vendor == "cuda" and int(arch[3:]) > int(target["arch"][3:])
    has_ptx = all(k.get("ptx") for k in bundle.manifest.kernels)
    if not (newer_nvidia and has_ptx):
        raise BundleError(f"this bundle was built for {target['name']} ({target['arch']}), which this {arch} GPU "
                          f"cannot run; recompile with --target set to one of: {fits}")


def load_kernels(bundle: Bundle, device: torch.device) -> dict[str, object]:
    """Every compiled kernel of the bundle, loaded as a launcher(grid, *args) on this device."""
    vendor, _ = device_vendor_arch(device)
    if vendor == "cuda":
        from fdpp.runtime.cuda_launcher import CudaKernel as Loaded
    else:
        from fdpp.runtime.hip_launcher import HipKernel as Loaded
    kernels = {}
    for meta in bundle.manifest.kernels:
        binary = bundle.member_bytes(KERNELS_DIR + meta["code_object"])
        ptx = bundle.member_bytes(KERNELS_DIR + meta["ptx"]).decode() if meta.get("ptx") else None
        kernels[meta["name"]] = Loaded(CompiledKernel.from_json(meta, binary, ptx), device.index or 0)
    return kernels


def weights_to_device(weights: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    try:
        return {name: t.to(device, non_blocking=False).contiguous() for name, t in weights.items()}
    except torch.OutOfMemoryError:
        free, total = torch.cuda.mem_get_info(device)
        need = sum(t.numel() * t.element_size() for t in weights.values())
        raise BundleError(f"the bundle's weights need {need / 1e9:.1f} GB but the GPU has {free / 1e9:.1f} GB free "
                          f"of {total / 1e9:.1f} GB; free GPU memory or use a smaller / sparser bundle") from None
