"""The CUDA launcher's choice of launch call, against a stand-in for cuda-python's driver module (no GPU here):
kernels built for programmatic dependent launch go through cuLaunchKernelEx with the programmatic-stream-
serialization attribute, others (and every kernel under FDPP_DEPENDENT_LAUNCH=0) through cuLaunchKernel."""

from __future__ import annotations

import types

import pytest

from fdpp.runtime.cuda_launcher import CudaKernel
from fdpp.runtime.kernel_binary import CompiledKernel, LaunchError


class FakeDriver:
    """What the launcher touches of cuda-python's driver module; records every launch."""

    CUresult = types.SimpleNamespace(CUDA_SUCCESS=0)
    CUlaunchAttributeID = types.SimpleNamespace(CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION=6)

    def __init__(self, ex_error: int = 0):
        self.launches: list[tuple] = []
        self.ex_error = ex_error

    class CUlaunchAttribute:
        def __init__(self):
            self.id = None
            self.value = types.SimpleNamespace(programmaticStreamSerializationAllowed=0)

    class CUlaunchConfig:
        pass

    @staticmethod
    def CUstream(handle):
        return ("stream", handle)

    def cuLaunchKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        self.launches.append(("plain", (gx, gy, gz), bx, shared, stream, params))
        return (0,)

    def cuLaunchKernelEx(self, config, function, params, extra):
        (attribute,) = config.attrs
        self.launches.append(("ex", (config.gridDimX, config.gridDimY, config.gridDimZ), config.blockDimX,
                              config.sharedMemBytes, config.hStream, params, attribute.id,
                              attribute.value.programmaticStreamSerializationAllowed, config.numAttrs))
        return (self.ex_error,)

    def cuGetErrorName(self, error):
        return (0, b"CUDA_ERROR_NOT_SUPPORTED")


def loaded(dependent: bool, driver: FakeDriver) -> CudaKernel:
    """A CudaKernel as __init__ leaves it, without loading a module (which needs a GPU)."""
    kernel = CompiledKernel(name="k", symbol="k_sym", vendor="cuda", arch="sm_90", binary=b"", ptx=None,
                            num_warps=4, warp_size=32, shared_memory_bytes=1024, params=(), scratch=(),
                            programmatic_dependent_launch=dependent)
    launcher = CudaKernel.__new__(CudaKernel)
    launcher.kernel, launcher.driver, launcher.function = kernel, driver, "function"
    launcher._arguments = types.SimpleNamespace(address=1234)
    launcher._choose_launch()
    return launcher


def test_dependent_kernels_launch_through_cuLaunchKernelEx_with_the_attribute(monkeypatch):
    monkeypatch.delenv("FDPP_DEPENDENT_LAUNCH", raising=False)
    driver = FakeDriver()
    launcher = loaded(True, driver)
    launcher._launch(3, 2, 1, 77)
    launcher._launch(5, 1, 1, 78)     # the cached configuration takes the new grid and stream
    assert driver.launches == [("ex", (3, 2, 1), 128, 1024, ("stream", 77), 1234, 6, 1, 1),
                               ("ex", (5, 1, 1), 128, 1024, ("stream", 78), 1234, 6, 1, 1)]


@pytest.mark.parametrize("dependent, env", [(False, None), (True, "0")])
def test_ordinary_launch_for_other_kernels_and_when_turned_off(monkeypatch, dependent, env):
    if env is None:
        monkeypatch.delenv("FDPP_DEPENDENT_LAUNCH", raising=False)
    else:
        monkeypatch.setenv("FDPP_DEPENDENT_LAUNCH", env)
    driver = FakeDriver()
    loaded(dependent, driver)._launch(4, 1, 1, 9)
    assert driver.launches == [("plain", (4, 1, 1), 128, 1024, ("stream", 9), 1234)]


def test_a_refused_dependent_launch_names_the_kernel_and_the_way_out(monkeypatch):
    monkeypatch.delenv("FDPP_DEPENDENT_LAUNCH", raising=False)
    launcher = loaded(True, FakeDriver(ex_error=801))
    with pytest.raises(LaunchError, match=r"kernel 'k': cuLaunchKernelEx.*FDPP_DEPENDENT_LAUNCH=0.*NOT_SUPPORTED"):
        launcher._launch(1, 1, 1, 0)
