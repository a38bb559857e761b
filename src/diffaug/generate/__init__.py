"""Synthetic images from a diffusers model, prompted with class labels (Paulsen et al.: SD-v1.4).

    python -m diffaug.generate syn1 --params params.yaml --classes data/prepared/classes.json --out data/synthetic/syn1

Every image's prompt and seed depend on (set, class, index, attempt) alone (plan.py), so an image is the
same whatever the batch size, number of processes or resume point; its bytes are identical for the same
batch size, device, software and levers, and each shard's provenance says how it was made. A killed run
resumes at the first missing shard. Several GPUs: shard k is made by torchrun rank k % WORLD_SIZE, with no
communication; the process that writes the last shard writes manifest.json (else one more single-process
run writes it, loading no model). Families, levers, scale: docs/generators.md, docs/scale.md.
This package never imports diffusers, torch or dvc at import time.
"""
