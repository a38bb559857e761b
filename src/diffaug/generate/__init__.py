"""Synthetic images from a diffusers model, prompted with class labels (Paulsen et al.: SD-v1.4).

    python -m diffaug.generate syn1 --params params.yaml --classes data/prepared/classes.json --out data/synthetic/syn1

A set is a name under synthetic.sets: `prompt` (text-to-image from the class label, or ImageNet
`class_ids` for DiT) or `img2img` (SDEdit / DA-Fusion from a real training image, `--train`). The
model's family is read from its model_index.json and runs through diffusers' own pipeline
(docs/generators.md). Every image's prompt and seed depend on (set, class, index, attempt) alone
(plan.py), so an image is the same whatever the batch size, number of processes or resume point; its
bytes are identical for the same batch size, device, software and levers, else within 1 uint8 level,
and each shard's provenance says how it was made. Shards are uint8 with a manifest
(diffaug.formats.synthetic, readable without torch); a killed run resumes at the first missing shard.

Modules: families (pipeline, defaults, levers per family), plan (prompts, seeds, settings hash, cost),
model (weights source, fingerprint, loading, levers), sampler (one batch through the pipeline), runner
(this process's shards, batch size, provenance, progress), __main__ (the CLI).

Several GPUs: shard k is made by rank k % WORLD_SIZE, with no communication (`torchrun --nproc-per-node 8
-m diffaug.generate ...`, one out directory on a shared filesystem across machines). The process that
writes the last shard writes manifest.json; if none saw every shard, one more single-process run of the
same command loads no model and writes it. This package never imports diffusers, torch or dvc at import time.
"""
