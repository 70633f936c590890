"""Errors of the compiler side. Each message is one line that says what is wrong and what to do."""


class CompileError(Exception):
    """A compile that cannot go on; the CLI prints the message alone, without a traceback."""


class UnsupportedOpError(CompileError):
    """An op of the source graph that no pass or kernel covers."""

    def __init__(self, op: str, source: str, detail: str = ""):
        where = f" at {source}" if source else ""
        more = f" ({detail})" if detail else ""
        super().__init__(f"unsupported op '{op}'{where}{more}: no fdpp pass or kernel covers it")
        self.op = op
        self.source = source
