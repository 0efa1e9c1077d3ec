"""rtcore: a compiled-kernel inference runtime for Stable Diffusion image editing (CycleDiffusion).

The runtime package imports neither ``rtcore.export`` nor ``rtcore.bench`` at import time, so a service can run
engines without the export stack.
"""

from .pipeline import CycleDiffusion, CycleDiffusionOutput, EncodedSource

__version__ = "0.1.0"
__all__ = ["CycleDiffusion", "CycleDiffusionOutput", "EncodedSource", "__version__"]
