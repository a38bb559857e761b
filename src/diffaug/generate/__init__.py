"""Synthetic images from Stable Diffusion v1.4, prompted with class labels (Paulsen et al.).

    python -m diffaug.generate syn1 --params params.yaml --classes data/prepared/classes.json --out data/synthetic/syn1

A set is a name under synthetic.sets. Kind `prompt` (syn1, syn2) is described below; kind `img2img`
(SDEdit / DA-Fusion) starts each image from a real training image and takes `--train
data/prepared/train.npz` (see plan.py and sampler.py); everything else below holds for both.

Image i of class c gets the prompt `templates[i % len(templates)]` with {label} = the class's word,
and a seed derived from (diffusion.seed, set, class, i, attempt) alone (plan.py), so every image is
meant to be the same whatever the batch size, number of processes or resume point. Its bytes are
identical for the same batch size, device, software and speed levers; otherwise float rounding
moves some values by at most 1 uint8 level, and each shard's provenance (in manifest.json) says
which batch size, levers, software and GPU made it. Images are generated at diffusion.resolution,
downsampled on the device to the dataset's size (bilinear, antialiased: within 1 uint8 level of
PIL's bilinear resize, which the paper used) and stored as uint8 shards with a manifest
(diffaug.formats.synthetic). A killed run resumes at the first missing shard; shards made with
other settings are deleted, never mixed in.

Modules: plan (what the set is: prompts, seeds, settings hash, cost), model (weights source,
fingerprint, loading, levers), sampler (the denoising loop), runner (which shards this process
makes, batches, provenance, progress), __main__ (the CLI).

Consumers read a finished set without torch:

    from diffaug.formats.synthetic import load_synthetic, synthetic_digest
    images, labels = load_synthetic("data/synthetic/syn1")   # uint8 NHWC, int64; verifies sha256s
    digest = synthetic_digest("data/synthetic/syn1")          # short content hash of the set

Several GPUs on one machine: shard k is made by rank k % WORLD_SIZE, with no communication.

    torchrun --standalone --nproc-per-node 8 -m diffaug.generate syn1 --params params.yaml \\
        --classes data/prepared/classes.json --out data/synthetic/syn1

Several machines: give every process the same out directory on a shared filesystem and its own
RANK (0..N-1) and WORLD_SIZE=N, e.g. with torchrun on each node
(`torchrun --nnodes 4 --node-rank $NODE --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m diffaug.generate ...`),
or with RANK/WORLD_SIZE/LOCAL_RANK exported by your scheduler (one process per GPU). The process
that writes the last shard writes manifest.json and samples.png. If shard files become visible
late on your filesystem (NFS attribute caching) and no process saw them all, run the same command
once more as a single process: it finds every shard valid, loads no model, and writes the
manifest. The result equals a single-process run byte for byte (same batch size and levers). Without a shared filesystem, run
the ranks anywhere, copy all shard-*.npz files into one directory, and run that final pass there.

This package never imports diffusers, torch or dvc at import time; the format module needs only numpy.
"""
