"""Learning-rate schedules, all stepped once per batch (the lr used by step s is the recipe's lr(s)).

  constant      linear warm-up over warmup_epochs, then the recipe's lr.
  cosine        linear warm-up, then a half cosine from lr to 0 over the rest of the run.
  paper_cyclic  a reproduction of the paper's bug, kept on purpose: torch's CosineAnnealingLR with
                T_max=200 and eta_min=0, stepped every batch rather than every epoch, so the lr falls
                to 0 in 200 iterations and climbs back in the next 200 (a 400-iteration cycle) for the
                whole run, whatever its length. Warm-up is not part of it (config rejects it).
Schedules are torch LR schedulers, so their state goes into checkpoints with `state_dict()`.
"""
from __future__ import annotations

import math

import torch

from diffaug.config import Recipe

PAPER_T_MAX = 200


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    if recipe.schedule == "paper_cyclic":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=PAPER_T_MAX, eta_min=0.0)
    total = recipe.epochs * steps_per_epoch
    warmup = recipe.warmup_epochs * steps_per_epoch
    cosine = recipe.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
