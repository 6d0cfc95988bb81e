"""P x K identity batches: P identities, K pictures each, disjoint identities per rank under DDP."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class IdentityBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler for `DataLoader(batch_sampler=...)`: batches of `num_identities` x `num_instances` items.

    Items are `(dataset index, augmentation seed)` pairs (see `ImageDataset`):
    each picture's random augmentation is drawn with its own seed, so a batch is
    the same whatever the number of data-loading workers, ranks or restarts.

    One epoch visits every identity once: the identities are shuffled, cut
    into groups of `num_identities` (an incomplete last group is dropped), and
    group `g` goes to rank `g % world_size` (the groups after the last complete
    round are dropped too, so that every rank runs the same number of steps).
    Each identity contributes `num_instances` of its pictures, drawn without
    replacement, or with replacement when it has fewer. Batches list the
    pictures identity by identity.

    The batches depend only on `(seed, epoch)`: call `set_epoch` before each
    epoch, and a resumed run draws the same batches as an uninterrupted one.
    A batch of one process with `world_size` x `num_identities` identities is
    the concatenation, in rank order, of the batches of `world_size` ranks.
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_identities: int,
        num_instances: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        for name, value in (("num_identities", num_identities), ("num_instances", num_instances),
                            ("world_size", world_size)):
            if value < 1:
                raise ValueError(f"IdentityBatchSampler: {name} must be >= 1, got {value}")
        if not 0 <= rank < world_size:
            raise ValueError(f"IdentityBatchSampler: rank must be in 0..{world_size - 1}, got {rank}")
        by_pid: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            by_pid[int(pid)].append(index)
        self.identities = sorted(by_pid)
        self.indices = [np.asarray(by_pid[pid]) for pid in self.identities]
        groups = len(self.identities) // num_identities
        if groups < world_size:
            raise ValueError(
                f"IdentityBatchSampler: {len(self.identities)} identities make {groups} groups of {num_identities}, "
                f"fewer than the {world_size} ranks; lower num_identities"
            )
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.identities) // self.num_identities // self.world_size

    @property
    def batch_size(self) -> int:
        return self.num_identities * self.num_instances

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.identities))
        # Every rank draws the same permutation, pictures and seeds, then keeps its own groups.
        picks, seeds = [], []
        for pool in self.indices:
            picks.append(rng.choice(pool, size=self.num_instances, replace=len(pool) < self.num_instances))
            seeds.append(rng.integers(0, 2**62, size=self.num_instances))
        per_round = self.num_identities * self.world_size
        for start in range(0, len(self) * per_round, per_round):
            first = start + self.rank * self.num_identities
            group = order[first:first + self.num_identities]
            yield [(int(i), int(s)) for identity in group for i, s in zip(picks[identity], seeds[identity])]
