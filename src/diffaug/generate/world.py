"""Which shards this process makes: torchrun / multi-node workers split them by RANK and WORLD_SIZE."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diffaug.errors import UserError
from diffaug.formats import synthetic as storage
from diffaug.generate.plan import Plan


@dataclass(frozen=True)
class World:
    """This process's place among `torchrun`/multi-node workers: shard k is made by rank k % size."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        values = {}
        for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
            raw = os.environ.get(name)
            if raw is None or raw == "":
                values[name] = default
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                raise UserError(f"environment variable {name}={raw!r}: allowed: an integer") from None
        world = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if not (world.size >= 1 and 0 <= world.rank < world.size and world.local_rank >= 0):
            raise UserError(f"RANK={world.rank}, WORLD_SIZE={world.size}: allowed: 0 <= RANK < WORLD_SIZE")
        return world

    def owns(self, k: int) -> bool:
        return k % self.size == self.rank


def shards_to_make(out_dir: Path, plan: Plan, world: World) -> list[int]:
    return [k for k in range(plan.num_shards) if world.owns(k) and storage.valid_shard(out_dir, plan, k) is None]
