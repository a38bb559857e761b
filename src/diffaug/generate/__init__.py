"""Synthetic images from a diffusers model, prompted with class labels (Paulsen et al.: SD-v1.4).

    python -m diffaug.generate syn1 --params params.yaml --classes data/prepared/classes.json --out data/synthetic/syn1

A set is a name under synthetic.sets: `prompt` sets are text-to-image from the class label, `img2img`
sets (SDEdit / DA-Fusion) start each image from a real training image (`--train
data/prepared/train.npz`), and with a class-conditional model (DiT) a prompt set maps classes to
ImageNet ids (`class_ids`). The model's family (SD 1.x/2.x, SDXL, SD3, FLUX.1, PixArt, Sana, DiT) is
read from its model_index.json and runs through diffusers' own pipeline; docs/generators.md lists
the families, their defaults and levers.

Image i of class c gets its prompt (or class id) cycled by i, and a seed derived from
(diffusion.seed, set, class, i, attempt) alone (plan.py), so every image is meant to be the same
whatever the batch size, number of processes or resume point. Its bytes are identical for the same
batch size, device, software and levers; otherwise float rounding moves some values by at most 1
uint8 level, and each shard's provenance (in manifest.json) says how it was made. Images are
downsampled on the device to the dataset's size and stored as uint8 shards with a manifest
(diffaug.formats.synthetic). A killed run resumes at the first missing shard; shards made with
other settings are deleted, never mixed in.

Modules: families (which pipeline, defaults, levers per family), plan (prompts, seeds, settings
hash, cost), model (weights source, fingerprint, loading, levers), sampler (one batch through the
pipeline), runner (shards of this process, batch size, provenance, progress), __main__ (the CLI).

Several GPUs: shard k is made by rank k % WORLD_SIZE, with no communication (`torchrun
--nproc-per-node 8 -m diffaug.generate ...`; on several machines, RANK/WORLD_SIZE/LOCAL_RANK from
torchrun or the scheduler and one out directory on a shared filesystem). The process that writes the
last shard writes manifest.json and samples.png; if none saw every shard (late NFS visibility, or
shards copied together from machines without a shared filesystem), one more single-process run of
the same command loads no model and writes the manifest, byte for byte what one process would.

Consumers read a finished set without torch: `diffaug.formats.synthetic.load_synthetic(out_dir)`
(uint8 NHWC images, int64 labels; verifies sha256s) and `synthetic_digest(out_dir)`. This package
never imports diffusers, torch or dvc at import time.
"""
