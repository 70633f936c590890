"""Ahead-of-time build of a whole plan: every kernel specialisation the plan needs, compiled for the target.

For each step and each of its kernel choices, launch_specs says which kernels to compile and how to launch
them; this module compiles each distinct specialisation once (codegen/build.py caches them on disk, so a
second target of the same model recompiles only kernels, and the same target nothing), records the
launches in the plan, and returns the code objects as bundle members. On sm_90 and later targets every kernel
is built for programmatic dependent launch (codegen/kernels/_common.wait_for_producers), so every kernel a
launch spec names must take GRID_DEPENDENCY.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from fdpp.codegen.build import compile_kernel
from fdpp.codegen.launch_specs import KernelSpec, step_launches
from fdpp.compiler.targets import Target
from fdpp.runtime.bundle import KERNELS_DIR
from fdpp.runtime.kernel_binary import CompiledKernel
from fdpp.runtime.schema import OpKind, WEIGHT_PREFIX, Plan


@dataclasses.dataclass
class BuiltKernels:
    plan: Plan                                   # with launches recorded in every kernel choice
    kernels: list[CompiledKernel]
    members: dict[str, bytes]                    # bundle member name -> bytes

    @property
    def manifest_entries(self) -> list[dict]:
        return [k.to_json() for k in self.kernels]


def _shape_lookup(plan: Plan, weight_shapes: dict[str, tuple[int, ...]]) -> Callable[[str], tuple]:
    shapes: dict[str, tuple] = {"tokens": ("batch", "seq"), "positions": ("batch", "seq")}
    for step in plan.steps:
        shapes[step.output] = tuple(step.out_shape)

    def shape_of(ref: str) -> tuple:
        return tuple(weight_shapes[ref[len(WEIGHT_PREFIX):]]) if ref.startswith(WEIGHT_PREFIX) else shapes[ref]
    return shape_of


def _row_stride_lookup(plan: Plan, shape_of: Callable[[str], tuple]) -> Callable[[str], object]:
    """ref -> elements between its rows: the last-axis width of the buffer it views (SLICE steps are views)."""
    viewed = {s.output: s.inputs[0] for s in plan.steps if s.op is OpKind.SLICE}

    def row_stride_of(ref: str):
        while ref in viewed:
            ref = viewed[ref]
        return shape_of(ref)[-1]
    return row_stride_of


def collect_launches(plan: Plan, dtype: str,
                     weight_shapes: dict[str, tuple[int, ...]]) -> tuple[Plan, dict[str, KernelSpec]]:
    """The plan with every kernel choice's launches recorded, and the distinct kernel specs they use."""
    shape_of = _shape_lookup(plan, weight_shapes)
    row_stride_of = _row_stride_lookup(plan, shape_of)
    specs: dict[str, KernelSpec] = {}
    steps = []
    for step in plan.steps:
        choices = []
        for choice in step.kernels:
            built = step_launches(step, choice, dtype, shape_of, row_stride_of)
            specs.update(built.specs)
            choices.append(dataclasses.replace(choice, launches=tuple(built.launches)))
        steps.append(dataclasses.replace(step, kernels=tuple(choices)))
    return dataclasses.replace(plan, steps=tuple(steps)), specs


def jit_launchers(specs: dict[str, KernelSpec]) -> dict[str, Callable]:
    """Launch each spec through Triton's JIT (or interpreter) instead of a code object: for tests."""
    def launcher(spec: KernelSpec):
        return lambda grid, *args: spec.fn[grid](*args, **dict(spec.constexprs), num_warps=spec.num_warps,
                                                 num_stages=spec.num_stages)
    return {key: launcher(spec) for key, spec in specs.items()}


def build_plan_kernels(plan: Plan, dtype: str, target: Target, weight_shapes: dict[str, tuple[int, ...]],
                       progress: Callable[[str], None] | None = None) -> BuiltKernels:
    plan, specs = collect_launches(plan, dtype, weight_shapes)
    kernels = []
    for index, (key, spec) in enumerate(sorted(specs.items()), start=1):
        if progress:
            progress(f"  kernel {index}/{len(specs)}: {key} for {target.name} ({target.arch})")
        kernels.append(compile_kernel(spec.fn, target, dict(spec.signature), dict(spec.constexprs), name=key,
                                      num_warps=spec.num_warps, num_stages=spec.num_stages,
                                      divisible_by_16=spec.divisible_by_16,
                                      dependent_launch=target.dependent_launch))
    members: dict[str, bytes] = {}
    for kernel in kernels:
        members[KERNELS_DIR + kernel.code_object_member] = kernel.binary
        if kernel.ptx is not None:
            members[KERNELS_DIR + kernel.ptx_member] = kernel.ptx.encode()
    return BuiltKernels(plan, kernels, members)
