"""The fdpp runtime: loads .fdpp bundles and generates text. Imports nothing from the compiler side."""

from fdpp.runtime.errors import BundleError, FdppError, GenerationError
from fdpp.runtime.model import GenerationOutput, Model, StreamEvent, load

__all__ = ["load", "Model", "GenerationOutput", "StreamEvent", "BundleError", "FdppError", "GenerationError"]
