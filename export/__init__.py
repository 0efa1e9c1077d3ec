"""rtcore.export: reference PyTorch models, checkpoint loading and the tiny checkpoint factory.

The runtime (``rtcore``) never imports this package at import time; it is loaded only when a checkpoint has to
be turned into engines.
"""

from .checkpoint import Checkpoint, load_checkpoint
from .tiny import make_random_checkpoint, make_tiny_checkpoint, make_tiny_ddpm
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

__all__ = ["AutoencoderKL", "Checkpoint", "UNet", "UNetConfig", "VAEConfig", "load_checkpoint",
           "make_random_checkpoint", "make_tiny_checkpoint",
           "make_tiny_ddpm"]
