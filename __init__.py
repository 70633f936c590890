"""fdpp: an ahead-of-time compiler for LLM inference on GPUs, and the runtime that runs its bundles.

`import fdpp` loads only the runtime: `fdpp.load(path)` needs neither the compiler nor transformers.
"""

from fdpp.runtime import BundleError, FdppError, GenerationError, GenerationOutput, Model, load

__version__ = "0.1.0"
__all__ = ["load", "Model", "GenerationOutput", "BundleError", "FdppError", "GenerationError", "__version__"]
