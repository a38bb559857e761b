"""Batched random crop + horizontal flip on the device, on uint8 NHWC images.

Same distribution as torchvision's RandomCrop(H, padding=p) then RandomHorizontalFlip(): each image
is zero-padded by p on every side (torchvision's default fill=0, padding_mode='constant', i.e. black
pixels before normalisation), a crop offset is drawn uniformly from 0..2p in each axis, and the crop is
mirrored with probability 1/2. Real and synthetic images get exactly this, with no per-source branch.
Crop and flip are one gather, so a batch costs one pad and one indexing kernel and no host sync.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """`images`: uint8 (B, H, W, C) on the generator's device; returns a new (B, H, W, C) batch."""
    batch, height, width, _ = images.shape
    if padding == 0 and not hflip:
        return images
    device = images.device
    rows = torch.arange(height, device=device).expand(batch, height)
    cols = torch.arange(width, device=device).expand(batch, width)
    if padding > 0:
        images = F.pad(images, (0, 0, padding, padding, padding, padding))  # (C, W, H) pairs: H and W only
        rows = rows + torch.randint(0, 2 * padding + 1, (batch, 1), device=device, generator=generator)
        cols = cols + torch.randint(0, 2 * padding + 1, (batch, 1), device=device, generator=generator)
    if hflip:
        flip = torch.rand(batch, 1, device=device, generator=generator) < 0.5
        cols = torch.where(flip, cols.flip(1), cols)
    index = torch.arange(batch, device=device)[:, None, None]
    return images[index, rows[:, :, None], cols[:, None, :]]
