"""rtcore: a compiled-kernel inference runtime for Stable Diffusion image editing (CycleDiffusion).

The runtime package imports neither ``rtcore.export`` nor ``rtcore.bench`` at import time, so a service can run
engines without the export stack.
"""

from .cycle_diffusion import CycleDiffusion, CycleDiffusionOutput, EncodedSource
from .manifest import EngineMismatch
from .stable_diffusion import StableDiffusion

__version__ = "0.1.0"
__all__ = ["CycleDiffusion", "CycleDiffusionOutput", "EncodedSource", "EngineMismatch", "StableDiffusion",
           "__version__", "load"]


def load(engine_dir, device="cpu", providers=None):
    """A CycleDiffusion pipeline on an engine directory built by ``rtcore export``."""
    return CycleDiffusion.load(engine_dir, device, providers)
