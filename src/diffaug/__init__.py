"""diffaug: Stable Diffusion dataset augmentation for image classification, as a DVC pipeline."""
__version__ = "0.1.0"
