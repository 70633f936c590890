"""Load a `CompiledKernel` on an AMD GPU and launch it through HIP's module API, via hip-python.

The counterpart of `runtime/cuda_launcher.py`, sharing its argument packing and scratch handling. Not yet run
on an AMD GPU: treat a failure here as a bug in this file before suspecting the kernel.
"""

from __future__ import annotations

import ctypes
from typing import Any

from fdpp.runtime.cuda_launcher import DriverKernel, ScratchPool
from fdpp.runtime.kernel_binary import CompiledKernel, LaunchError, PackedArguments

_hip_module: Any = None


def hip_runtime() -> Any:
    """hip-python's `hip` module; LaunchError in one line when hip-python is missing."""
    global _hip_module
    if _hip_module is None:
        try:
            from hip import hip
        except ImportError:
            raise LaunchError("launching fdpp kernels on AMD GPUs needs hip-python: "
                              "pip install hip-python (matching your ROCm version)") from None
        _hip_module = hip
    return _hip_module


class HipKernel(DriverKernel):
    """A CompiledKernel loaded on the current HIP device; calling it launches on torch's current stream."""

    def __init__(self, kernel: CompiledKernel, device: int | None = None):
        import torch
        if kernel.vendor != "hip":
            raise LaunchError(f"kernel '{kernel.name}' was built for {kernel.vendor} ({kernel.arch}), not AMD")
        if kernel.cooperative:
            raise LaunchError(f"kernel '{kernel.name}' needs a cooperative launch, which this launcher does not do")
        self.kernel = kernel
        self.hip = hip = hip_runtime()
        self.device = torch.cuda.current_device() if device is None else device  # ROCm torch keeps the name
        with torch.cuda.device(self.device):
            device_arch = torch.cuda.get_device_properties(self.device).gcnArchName.split(":")[0]
            if device_arch != kernel.arch:  # hsaco has no PTX-like fallback: the arch must match exactly
                raise LaunchError(f"kernel '{kernel.name}' was built for {kernel.arch}, this GPU is {device_arch}")
            image = ctypes.create_string_buffer(kernel.binary, len(kernel.binary))
            self.module = self._check(hip.hipModuleLoadData(ctypes.addressof(image)), "hipModuleLoadData")
            self.function = self._check(hip.hipModuleGetFunction(self.module, kernel.symbol.encode()),
                                        f"hipModuleGetFunction('{kernel.symbol}')")
        self._arguments = PackedArguments(kernel)
        self._scratch = ScratchPool(kernel, torch.device("cuda", self.device))

    def _launch(self, x: int, y: int, z: int, stream: int) -> None:
        self._check(self.hip.hipModuleLaunchKernel(
            self.function, x, y, z, self.kernel.block_threads, 1, 1, self.kernel.shared_memory_bytes,
            stream, self._arguments.address, None), f"hipModuleLaunchKernel(grid=({x}, {y}, {z}))")

    def _check(self, result: Any, action: str) -> Any:
        error, *values = result if isinstance(result, tuple) else (result,)
        if error != self.hip.hipError_t.hipSuccess:
            raise LaunchError(f"kernel '{self.kernel.name}': {action} failed with {error}")
        return values[0] if len(values) == 1 else tuple(values) or None
