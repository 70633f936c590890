"""Errors the runtime raises. Each message is one line: what is wrong and what to do."""


class FdppError(Exception):
    """Base of fdpp's own errors; the CLI prints these as one line."""


class BundleError(FdppError):
    """A .fdpp file that cannot be used: missing, truncated, corrupted, wrong version, wrong device."""


class GenerationError(FdppError):
    """A generate() request outside what the bundle supports (too long, too many prompts, no tokenizer)."""
