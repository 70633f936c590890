"""The GPU target table: data shared by the compiler (what to build for) and the runtime (what fits this GPU).

Numbers are vendor datasheet figures (leads, not measurements): the cost models use them only for
ratios between kernel choices, and `fdcc tune` replaces them with measurements on a real GPU.
AMD parts with two dies (MI250X) are listed per die (one GCD), since a bundle runs on one device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Vendor = Literal["cuda", "hip"]


@dataclass(frozen=True)
class Target:
    name: str
    vendor: Vendor
    arch: str                      # "sm_90" | "gfx942" ...
    warp_size: int
    multiprocessors: int           # SMs (NVIDIA) or CUs (AMD)
    memory_bandwidth_gbs: float    # datasheet DRAM bandwidth, GB/s
    tensor_tflops_fp16: float      # dense fp16 matrix-unit peak with fp32 accumulation
    vector_tflops_fp32: float      # CUDA-core / vector-ALU fp32 peak
    shared_memory_per_block_kb: int

    @property
    def compute_capability(self) -> int:
        """NVIDIA only: 90 for sm_90."""
        if self.vendor != "cuda":
            raise ValueError(f"target {self.name} is not an NVIDIA target")
        return int(self.arch.removeprefix("sm_"))

    @property
    def dependent_launch(self) -> bool:
        """Whether kernels can be launched as programmatic dependents (griddepcontrol): NVIDIA sm_90 and later."""
        return self.vendor == "cuda" and self.compute_capability >= 90

    @property
    def triton_arch(self) -> int | str:
        """The `arch` field of triton's GPUTarget: an int capability for CUDA, the gfx name for HIP."""
        return self.compute_capability if self.vendor == "cuda" else self.arch

    @property
    def code_object_kind(self) -> str:
        return "cubin" if self.vendor == "cuda" else "hsaco"


_TARGETS = (
    Target("a100", "cuda", "sm_80", 32, 108, 2039, 312, 19.5, 163),
    Target("h100", "cuda", "sm_90", 32, 132, 3350, 989, 67, 227),
    Target("h200", "cuda", "sm_90", 32, 132, 4800, 989, 67, 227),
    Target("l40s", "cuda", "sm_89", 32, 142, 864, 362, 91.6, 99),
    Target("rtx3090", "cuda", "sm_86", 32, 82, 936, 71, 35.6, 99),
    Target("rtx4090", "cuda", "sm_89", 32, 128, 1008, 165, 82.6, 99),
    Target("mi210", "hip", "gfx90a", 64, 104, 1638, 181, 22.6, 64),
    Target("mi250x", "hip", "gfx90a", 64, 110, 1638, 191.5, 23.9, 64),
    Target("mi300x", "hip", "gfx942", 64, 304, 5300, 1307, 163.4, 64),
    Target("rx7900xtx", "hip", "gfx1100", 32, 96, 960, 123, 61.4, 64),
)

TARGETS: dict[str, Target] = {t.name: t for t in _TARGETS}


def targets_for_arch(vendor: str, arch: str) -> list[str]:
    """Names of the targets whose code runs natively on a GPU of this vendor and arch."""
    return [t.name for t in TARGETS.values() if t.vendor == vendor and t.arch == arch]
