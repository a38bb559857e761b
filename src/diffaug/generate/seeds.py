"""Per-image seeds: a pure function of what the image is, never of how the work was scheduled.

Image `index` of class `class_name` in synthetic set `set_name` gets the first 8 bytes of
sha256("diffaug/v1|<diffusion seed>|<set>|<class>|<index>|<attempt>"). The same image therefore gets
the same seed whatever the batch size, the number of processes or the point a run resumed from;
`attempt` counts safety-checker regenerations (0 for the first try). A seed reproduces its image in
plain diffusers: `pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed))`.
"""
from __future__ import annotations

import hashlib


def image_seed(diffusion_seed: int, set_name: str, class_name: str, index: int, attempt: int = 0) -> int:
    """A 64-bit seed (0 <= seed < 2**64, what torch.Generator.manual_seed accepts)."""
    key = f"diffaug/v1|{diffusion_seed}|{set_name}|{class_name}|{index}|{attempt}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
