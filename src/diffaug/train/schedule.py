"""Learning-rate schedules: `learning_rate(recipe, steps_per_epoch)` is the plain function lr(step),
step counted from 0 over the whole run (one step per batch).

  constant      linear warm-up over warmup_epochs, then the recipe's lr.
  cosine        linear warm-up, then a half cosine from lr to 0 over the rest of the run.
  paper_cyclic  a reproduction of the paper's bug, kept on purpose: torch's CosineAnnealingLR with
                T_max=200 and eta_min=0, stepped every batch rather than every epoch, so the lr falls
                to 0 in 200 iterations and climbs back in the next 200 (a 400-iteration cycle) for the
                whole run, whatever its length (its closed form). Warm-up is not part of it (config rejects it).
A run's position is its step, so a checkpoint needs no schedule state.
"""
from __future__ import annotations

import math
from collections.abc import Callable

from diffaug.config import Recipe

PAPER_T_MAX = 200


def learning_rate(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    if recipe.schedule == "paper_cyclic":
        return lambda step: recipe.lr * (1.0 + math.cos(math.pi * step / PAPER_T_MAX)) / 2
    total, warmup = recipe.epochs * steps_per_epoch, recipe.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup))) if recipe.schedule == "cosine" else 1.0

    return lambda step: recipe.lr * factor(step)
