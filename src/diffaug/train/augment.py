"""Batched augmentation on the device, on uint8 NHWC images: crop + flip, cutout, TrivialAugment.

Crop + flip is torchvision's RandomCrop(H, padding=p) (zero fill) then RandomHorizontalFlip() in one gather:
one kernel and no host sync per batch, where torchvision's v2 transforms draw one crop per call. Cutout
(DeVries & Taylor 2017) fills a square around a uniform centre, clipped at the border, with the mixture's
mean pixel (zero after normalisation). Random numbers are drawn up front for a whole epoch (`draw_*`) and
a step only reads them (`apply_*`): the same numbers eager or inside a CUDA graph.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# TrivialAugmentWide draws one (op, magnitude) per call of torchvision's transform; it is called on
# groups of this many images (in the epoch's random order), so every image gets TrivialAugment's own
# distribution of ops while a 50k-image epoch costs ~800 calls instead of 50k.
TRIVIAL_AUGMENT_GROUP = 64


def draw_crop_flip(count: int, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """(count, 3) int64 on the generator's device: row offset, column offset (0..2p), flip (0/1)."""
    device = generator.device
    out = torch.zeros(count, 3, dtype=torch.int64, device=device)
    if padding > 0:
        out[:, 0] = torch.randint(0, 2 * padding + 1, (count,), device=device, generator=generator)
        out[:, 1] = torch.randint(0, 2 * padding + 1, (count,), device=device, generator=generator)
    if hflip:
        out[:, 2] = (torch.rand(count, device=device, generator=generator) < 0.5).long()
    return out


def apply_crop_flip(images: torch.Tensor, padding: int, hflip: bool, params: torch.Tensor) -> torch.Tensor:
    """`images`: uint8 (B, H, W, C); `params`: (B, 3) from draw_crop_flip. Returns a new (B, H, W, C) batch."""
    batch, height, width, _ = images.shape
    if padding == 0 and not hflip:
        return images
    device = images.device
    rows = torch.arange(height, device=device).expand(batch, height)
    cols = torch.arange(width, device=device).expand(batch, width)
    if padding > 0:
        images = F.pad(images, (0, 0, padding, padding, padding, padding))  # (C, W, H) pairs: H and W only
        rows = rows + params[:, 0:1]
        cols = cols + params[:, 1:2]
    if hflip:
        cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
    index = torch.arange(batch, device=device)[:, None, None]
    return images[index, rows[:, :, None], cols[:, None, :]]


def draw_cutout(count: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 2) int64: the centre row and column of each image's cutout square."""
    device = generator.device
    rows = torch.randint(0, height, (count,), device=device, generator=generator)
    cols = torch.randint(0, width, (count,), device=device, generator=generator)
    return torch.stack([rows, cols], dim=1)


def apply_cutout(images: torch.Tensor, size: int, centres: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Set a `size`-square around each centre to `fill` (uint8 (C,)); a mask, so shapes stay static."""
    _, height, width, _ = images.shape
    top, left = (centres - size // 2).split(1, dim=1)  # the square covers centre - size//2 .. centre - size//2 + size - 1
    rows = torch.arange(height, device=images.device)[None, :]
    cols = torch.arange(width, device=images.device)[None, :]
    in_rows = (rows >= top) & (rows < top + size)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size)  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[..., None]  # (B, H, W, 1)
    return torch.where(mask, fill.to(images.dtype), images)


def trivial_augment(images: torch.Tensor, group: int = TRIVIAL_AUGMENT_GROUP) -> torch.Tensor:
    """torchvision.transforms.v2.TrivialAugmentWide on uint8 (N, H, W, C) device images, one draw per group
    of `group` images. Its op and magnitude come from torch's global CPU generator (seeded by the trainer
    and saved in checkpoints), so a resumed run draws the same ops."""
    from torchvision.transforms import v2

    transform = v2.TrivialAugmentWide()
    out = torch.empty_like(images)
    for start in range(0, len(images), group):
        chunk = images[start:start + group].permute(0, 3, 1, 2)  # v2 takes (..., C, H, W)
        out[start:start + group] = transform(chunk).permute(0, 2, 3, 1)
    return out
