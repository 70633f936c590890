"""The GPU targets fdcc compiles for. The table itself lives in runtime/targets.py, shared with the
runtime (which must say which targets fit a GPU); here it is looked up with a compiler error."""

from __future__ import annotations

from fdpp.compiler.errors import CompileError
from fdpp.runtime.targets import TARGETS, Target, targets_for_arch

__all__ = ["TARGETS", "Target", "get_target", "targets_for_arch"]


def get_target(name: str) -> Target:
    """Look a target up by exact name; the error lists the valid ones."""
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise CompileError(f"unknown target '{name}'; valid targets: {', '.join(TARGETS)}") from None
