"""Load a `CompiledKernel` on an NVIDIA GPU and launch it through the CUDA driver API; triton is not used.

    kernel = CudaKernel(compiled)                  # loads the module now: do it before any graph capture
    kernel((rows,), x, scale, out, n_cols, stride, alpha)   # on torch's current stream

Uses cuda-python (`cuda.bindings.driver`, or the older `from cuda import cuda`), imported only when a kernel
is loaded, so this module imports on machines without it. Launching allocates nothing and never synchronises,
so launches can be captured into a CUDA graph; the only device memory a launch may need, triton's scratch
buffers, is reserved with `reserve_scratch(grid)` before capture (most kernels need none).

Kernels built with `programmatic_dependent_launch` (sm_90 and later; each starts with wait_for_producers)
are launched with cuLaunchKernelEx and the programmatic-stream-serialization attribute: the GPU may schedule
their programs while the kernel before them on the stream still runs, and a CUDA graph captured from such
launches keeps the programmatic edges. FDPP_DEPENDENT_LAUNCH=0, read when a kernel is loaded, launches them
as ordinary kernels instead (their wait then does nothing), to measure what dependent launch gains.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Sequence

from fdpp.runtime.kernel_binary import CompiledKernel, LaunchError, PackedArguments

_DEFAULT_SHARED_MEMORY_LIMIT = 48 * 1024   # above this a kernel must opt in to more dynamic shared memory
_driver_module: Any = None


def cuda_driver() -> Any:
    """The cuda-python driver module; LaunchError in one line when cuda-python is missing."""
    global _driver_module
    if _driver_module is None:
        try:
            from cuda.bindings import driver
        except ImportError:
            try:
                from cuda import cuda as driver  # cuda-python before 12.6 spelled it this way
            except ImportError:
                raise LaunchError("launching fdpp kernels on NVIDIA GPUs needs cuda-python: "
                                  "pip install 'cuda-python>=12'") from None
        _check(driver, driver.cuInit(0), "cuInit", "<driver>")
        _driver_module = driver
    return _driver_module


def dependent_launch_enabled() -> bool:
    """False when FDPP_DEPENDENT_LAUNCH=0: kernels built for dependent launch are then launched as ordinary ones."""
    return os.environ.get("FDPP_DEPENDENT_LAUNCH", "1") != "0"


def grid3(grid: Sequence[int] | int) -> tuple[int, int, int]:
    """A grid of 1 to 3 dimensions as (x, y, z)."""
    dims = (grid,) if isinstance(grid, int) else tuple(grid)
    if not 1 <= len(dims) <= 3:
        raise LaunchError(f"a grid has 1 to 3 dimensions, got {dims}")
    return tuple(int(d) for d in dims) + (1,) * (3 - len(dims))  # type: ignore[return-value]


class ScratchPool:
    """Device memory for triton's trailing scratch pointers, grown only outside CUDA graph capture.

    One buffer per scratch kind, reused by every launch of the kernel: safe because launches on one stream
    run in order. Kernels launched concurrently on several streams need one launcher object per stream.
    A buffer outgrown is kept, not freed: a captured CUDA graph may still point at it.
    """

    def __init__(self, kernel: CompiledKernel, device: Any):
        self.kernel = kernel
        self.device = device
        self._buffers: dict[str, Any] = {}
        self._outgrown: list[Any] = []

    def reserve(self, programs: int) -> None:
        import torch
        for scratch in self.kernel.scratch:
            size = scratch.bytes_for(programs, self.kernel.num_ctas)
            held = self._buffers.get(scratch.name)
            if size and (held is None or held.numel() < size):
                buffer = torch.empty(size, dtype=torch.uint8, device=self.device)
                if buffer.data_ptr() % scratch.align:
                    raise LaunchError(f"kernel '{self.kernel.name}': {scratch.name} buffer is not "
                                      f"{scratch.align}-byte aligned")
                if held is not None:
                    self._outgrown.append(held)
                self._buffers[scratch.name] = buffer

    def pointers(self, programs: int) -> list[int]:
        """One pointer per scratch kind (0 when it needs no memory), reserving memory if not capturing."""
        import torch
        pointers = []
        for scratch in self.kernel.scratch:
            size = scratch.bytes_for(programs, self.kernel.num_ctas)
            if size == 0:
                pointers.append(0)
                continue
            held = self._buffers.get(scratch.name)
            if held is None or held.numel() < size:
                if torch.cuda.is_current_stream_capturing():
                    raise LaunchError(f"kernel '{self.kernel.name}' needs {size} bytes of {scratch.name}: "
                                      f"call reserve_scratch(grid) before capturing the CUDA graph")
                self.reserve(programs)
                held = self._buffers[scratch.name]
            pointers.append(held.data_ptr())
        return pointers


class DriverKernel:
    """What a kernel launched through a driver API (CUDA or HIP) shares: scratch memory, argument packing."""

    kernel: CompiledKernel
    _arguments: PackedArguments
    _scratch: ScratchPool

    def reserve_scratch(self, grid: Sequence[int] | int) -> None:
        """Allocate the scratch memory launches up to this grid size need; call before graph capture."""
        x, y, z = grid3(grid)
        self._scratch.reserve(x * y * z)

    def __call__(self, grid: Sequence[int] | int, *args: Any, stream: int | None = None) -> None:
        """Launch on `stream` (default: torch's current stream); args follow `kernel.params`."""
        import torch
        x, y, z = grid3(grid)
        if x * y * z == 0:
            return  # triton launches nothing for an empty grid either
        self._arguments.fill(args, self._scratch.pointers(x * y * z))
        if stream is None:
            stream = torch.cuda.current_stream(self.device).cuda_stream
        self._launch(x, y, z, stream)

    def _launch(self, x: int, y: int, z: int, stream: int) -> None:
        raise NotImplementedError


class CudaKernel(DriverKernel):
    """A CompiledKernel loaded on one CUDA device; calling it launches on torch's current stream."""

    def __init__(self, kernel: CompiledKernel, device: int | None = None):
        import torch
        if kernel.vendor != "cuda":
            raise LaunchError(f"kernel '{kernel.name}' was built for {kernel.vendor} ({kernel.arch}), not NVIDIA")
        if kernel.num_ctas != 1 or kernel.cooperative:
            raise LaunchError(f"kernel '{kernel.name}' needs a cluster or cooperative launch, "
                              f"which this launcher does not do; rebuild it with num_ctas=1")
        self.kernel = kernel
        self.driver = driver = cuda_driver()
        self.device = torch.cuda.current_device() if device is None else device
        with torch.cuda.device(self.device):
            cu_device = self._check(driver.cuDeviceGet(self.device), "cuDeviceGet")
            self._make_primary_context_current(cu_device)
            major, minor = torch.cuda.get_device_capability(self.device)
            self.device_arch = f"sm_{major}{minor}"
            self.module, self.loaded_from = self._load_module()
            self.function = self._check(driver.cuModuleGetFunction(self.module, kernel.symbol.encode()),
                                        f"cuModuleGetFunction('{kernel.symbol}')")
            self._allow_large_shared_memory(cu_device)
        self._arguments = PackedArguments(kernel)
        self._scratch = ScratchPool(kernel, torch.device("cuda", self.device))
        self._choose_launch()

    def _choose_launch(self) -> None:
        """Dependent launches (cuLaunchKernelEx) for kernels built for them, unless FDPP_DEPENDENT_LAUNCH=0."""
        dependent = self.kernel.programmatic_dependent_launch and dependent_launch_enabled()
        self._config = self._dependent_launch_config() if dependent else None     # None: cuLaunchKernel

    def _launch(self, x: int, y: int, z: int, stream: int) -> None:
        if self._config is None:
            self._check(self.driver.cuLaunchKernel(
                self.function, x, y, z, self.kernel.block_threads, 1, 1, self.kernel.shared_memory_bytes,
                self.driver.CUstream(stream), self._arguments.address, 0), f"cuLaunchKernel(grid=({x}, {y}, {z}))")
            return
        config = self._config
        config.gridDimX, config.gridDimY, config.gridDimZ = x, y, z
        config.hStream = self.driver.CUstream(stream)
        self._check(self.driver.cuLaunchKernelEx(config, self.function, self._arguments.address, 0),
                    f"cuLaunchKernelEx(grid=({x}, {y}, {z}), programmatic dependent; FDPP_DEPENDENT_LAUNCH=0 "
                    f"launches ordinarily)")

    def _dependent_launch_config(self) -> Any:
        """A launch configuration with the programmatic-stream-serialization attribute; grid and stream are
        filled in per launch."""
        driver = self.driver
        attribute = driver.CUlaunchAttribute()
        attribute.id = driver.CUlaunchAttributeID.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION
        attribute.value.programmaticStreamSerializationAllowed = 1
        config = driver.CUlaunchConfig()
        config.blockDimX, config.blockDimY, config.blockDimZ = self.kernel.block_threads, 1, 1
        config.sharedMemBytes = self.kernel.shared_memory_bytes
        config.attrs = [attribute]
        config.numAttrs = 1
        return config

    def _load_module(self) -> tuple[Any, str]:
        """The cubin when the driver accepts it for this GPU, else the PTX through the driver's JIT."""
        kernel, driver = self.kernel, self.driver
        image = ctypes.create_string_buffer(kernel.binary, len(kernel.binary))
        error, module = driver.cuModuleLoadData(ctypes.addressof(image))
        if error == driver.CUresult.CUDA_SUCCESS:
            return module, "cubin"
        cubin_error = _error_name(driver, error)
        if kernel.ptx is None:
            raise LaunchError(f"kernel '{kernel.name}' ({kernel.arch}, {kernel.toolchain}) does not load on this "
                              f"{self.device_arch} GPU ({cubin_error}, driver {_driver_version(driver)}) "
                              f"and has no PTX to JIT")
        ptx = ctypes.create_string_buffer(kernel.ptx.encode())
        error, module = driver.cuModuleLoadDataEx(ctypes.addressof(ptx), 0, [], [])
        if error != driver.CUresult.CUDA_SUCCESS:
            raise LaunchError(f"kernel '{kernel.name}' ({kernel.arch}, {kernel.toolchain}) does not load on this "
                              f"{self.device_arch} GPU: cubin {cubin_error}, PTX JIT {_error_name(driver, error)} "
                              f"(driver {_driver_version(driver)})")
        return module, "ptx"

    def _allow_large_shared_memory(self, cu_device: Any) -> None:
        driver, shared = self.driver, self.kernel.shared_memory_bytes
        if shared <= _DEFAULT_SHARED_MEMORY_LIMIT:
            return
        opt_in = self._check(driver.cuDeviceGetAttribute(
            driver.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, cu_device),
            "cuDeviceGetAttribute(MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)")
        static = self._check(driver.cuFuncGetAttribute(
            driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, self.function),
            "cuFuncGetAttribute(SHARED_SIZE_BYTES)")
        if shared + static > opt_in:
            raise LaunchError(f"kernel '{self.kernel.name}' needs {shared + static} bytes of shared memory, "
                              f"this {self.device_arch} GPU allows {opt_in}")
        self._check(driver.cuFuncSetAttribute(
            self.function, driver.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, shared),
            "cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)")

    def _make_primary_context_current(self, cu_device: Any) -> None:
        # torch uses the device's primary context; load the module into the same one, even on a thread
        # where torch has not made it current yet.
        primary = self._check(self.driver.cuDevicePrimaryCtxRetain(cu_device), "cuDevicePrimaryCtxRetain")
        current = self._check(self.driver.cuCtxGetCurrent(), "cuCtxGetCurrent")
        if int(current) != int(primary):
            self._check(self.driver.cuCtxSetCurrent(primary), "cuCtxSetCurrent")

    def _check(self, result: Any, action: str) -> Any:
        return _check(self.driver, result, action, self.kernel.name)


def _check(driver: Any, result: Any, action: str, kernel_name: str) -> Any:
    """The values of a cuda-python call's (CUresult, *values) tuple; LaunchError naming the kernel otherwise."""
    error, *values = result
    if error != driver.CUresult.CUDA_SUCCESS:
        raise LaunchError(f"kernel '{kernel_name}': {action} failed with {_error_name(driver, error)}")
    return values[0] if len(values) == 1 else tuple(values) or None


def _error_name(driver: Any, error: Any) -> str:
    status, name = driver.cuGetErrorName(error)
    return name.decode() if status == driver.CUresult.CUDA_SUCCESS and name else str(error)


def _driver_version(driver: Any) -> str:
    status, version = driver.cuDriverGetVersion()
    return f"{version // 1000}.{version % 1000 // 10}" if status == driver.CUresult.CUDA_SUCCESS else "unknown"
