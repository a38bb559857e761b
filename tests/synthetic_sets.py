"""Small finished synthetic sets written with formats.synthetic's own writer functions (no diffusion)."""
from pathlib import Path

import numpy as np

from diffaug.formats import synthetic
from diffaug.io import sha256_json


def write_fake_set(out_dir: Path, name: str = "syn1", classes=("airplane", "automobile", "bird"), per_class: int = 5,
                   per_shard: int = 4, size: int = 8, images: np.ndarray | None = None, first_seed: int = 1000) -> Path:
    """A finished set (shards, manifest.json, samples.png) whose image g has pixel (0, 0) = (g, class, 7)
    unless `images` (uint8 NHWC, in class-major order) is given. Image g has seed first_seed + g."""
    settings = {"save_full_resolution": False, "prompt": "{label}", "fake": True}
    plan = synthetic.SetLayout(name, tuple(classes), (size, size), per_class, per_shard, settings, sha256_json(settings))
    if images is None:
        images = np.zeros((plan.num_images, size, size, 3), np.uint8)
        for g in range(plan.num_images):
            images[g, 0, 0] = (g, plan.class_and_index(g)[0], 7)
            images[g, 1:, :, 2] = 40 * plan.class_and_index(g)[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    for k in range(plan.num_shards):
        span = plan.shard_range(k)
        synthetic.write_shard(out_dir, k, plan, images=images[span.start:span.stop],
                              seeds=np.array([first_seed + g for g in span], np.uint64),
                              regenerations=np.array([g % 2 for g in span]), flagged=np.zeros(len(span), bool), device="cpu")
    prompts = [f"a {classes[plan.class_and_index(g)[0]]}" for g in range(plan.num_images)]
    assert synthetic.assemble(out_dir, plan, prompts, lone_process=True) is not None
    return out_dir
