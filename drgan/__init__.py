"""drgan: conditional synthesis of diabetic-retinopathy fundus photographs (DR-GAN)."""
from drgan.config import ModelConfig, preset
from drgan.errors import DrganError

__version__ = "0.1.0"
__all__ = ["ModelConfig", "preset", "DrganError", "__version__"]
