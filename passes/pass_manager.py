"""Runs passes in order, verifies the IR between them, dumps it on request, and names the failing pass."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fdpp.compiler.errors import CompileError
from fdpp.compiler.ir import Graph, format_graph, verify
from fdpp.compiler.progress import Counter, Progress, throttled


@dataclass
class PassResult:
    graph: Graph
    changes: dict[str, int] = field(default_factory=dict)   # what the pass changed, by kind

    @property
    def modified(self) -> bool:
        return any(self.changes.values())


@dataclass(frozen=True)
class PassContext:
    """What every pass may read besides the graph: options, target, calibration data (a
    compiler.calibration.CalibrationSet, shared by every target's pipeline; None where none is needed), and
    where to say progress lines (None: nowhere). Passes that take more than a few seconds report through
    counter()."""

    options: Any
    target: Any
    calibration: Any = None
    progress: Progress | None = None

    def counter(self, what: str) -> Counter:
        """report(done, total) saying "  {what} {done}/{total}" every few seconds and at the end."""
        return throttled(self.progress, what)


PassFn = Callable[[Graph, PassContext], PassResult]


@dataclass
class PassManager:
    passes: list[tuple[str, PassFn]]
    dump_dir: Path | None = None
    on_pass: Callable[[str, PassResult, float], None] | None = None   # (name, result, seconds)
    history: list[tuple[str, dict[str, int]]] = field(default_factory=list)

    def run(self, graph: Graph, ctx: PassContext) -> Graph:
        self.history = []
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            (self.dump_dir / "00-imported.ir").write_text(format_graph(graph))
        for index, (name, fn) in enumerate(self.passes, start=1):
            before = ", ".join(n for n, _ in self.history) or "none"
            started = time.perf_counter()
            try:
                result = fn(graph, ctx)
                verify(result.graph)
            except CompileError as e:
                raise CompileError(f"pass {name} (after {before}): {e}") from e
            except Exception as e:
                raise CompileError(f"pass {name} (after {before}) failed: {type(e).__name__}: {e}") from e
            graph = result.graph
            self.history.append((name, dict(result.changes)))
            if self.on_pass:
                self.on_pass(name, result, time.perf_counter() - started)
            if self.dump_dir is not None:
                (self.dump_dir / f"{index:02d}-{name}.ir").write_text(format_graph(graph))
        return graph
