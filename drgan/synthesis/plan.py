"""The plan of a synthesis run: which grade, structure and random streams item i gets.

Everything about item i derives from (seed, i) alone. Items are generated in fixed batches
[k*B, (k+1)*B): a resumed or sharded run recomputes exactly the same batches, so its images are
bit-identical to an uninterrupted run with the same batch size. Nothing here holds a list of the
items or batches: the memory of a run does not grow with the count.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drgan.config import MAX_SET, NUM_GRADES
from drgan.errors import ParameterError, UsageError


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """Not of the form i/n: a usage error (exit 2); i/n with i outside 0..n-1: bad input (exit 1)."""
        try:
            i, n = (int(p) for p in text.split("/"))
        except ValueError:
            raise UsageError(f"{{shard}} {text!r}: expected i/n, e.g. 0/4") from None
        if n < 1 or not 0 <= i < n:
            raise ParameterError(f"{{shard}} {text!r}: need 0 <= i < n")
        return cls(i, n)


@dataclass(frozen=True)
class Plan:
    count: int                  # images in the whole set
    grades: tuple[int, ...]     # grades cycled over the items (balanced: N / len(grades) each)
    seed: int                   # the run's seed
    batch: int                  # generation batch (fixed batches make resume/sharding exact)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ParameterError(f"{{count}} {self.count}: need at least one image")
        if self.count > MAX_SET:
            raise ParameterError(f"{{count}} {self.count}: at most {MAX_SET:,} images in a set")
        if not self.grades or any(g not in range(NUM_GRADES) for g in self.grades):
            raise ParameterError(f"{{grades}} {list(self.grades)}: grades must lie in 0..{NUM_GRADES - 1}")
        if len(set(self.grades)) != len(self.grades):  # a repeat would skew the balance the set promises
            raise ParameterError(f"{{grades}} {list(self.grades)}: each grade once")
        if self.batch < 1:
            raise ParameterError(f"{{batch}} {self.batch}: need at least 1")

    def grade(self, i: int) -> int:
        return self.grades[i % len(self.grades)]

    def item_id(self, i: int) -> str:
        return f"syn_{self.seed}_{i:07d}"

    def item_index(self, item_id: str) -> int | None:
        """The i whose item_id is `item_id`, None for an id outside this plan (no table of ids:
        memory stays flat in the count)."""
        prefix = f"syn_{self.seed}_"
        digits = item_id[len(prefix):]
        if not item_id.startswith(prefix) or not digits.isdigit():
            return None
        i = int(digits)
        return i if i < self.count and self.item_id(i) == item_id else None

    def item_seeds(self, i: int) -> tuple[int, int, int]:
        """Independent 63-bit seeds of item i for (structure + lesions, grading vector, noise)."""
        state = np.random.SeedSequence([int(self.seed), int(i)]).generate_state(3, np.uint64)
        return tuple(int(s >> np.uint64(1)) for s in state)

    @property
    def num_batches(self) -> int:
        return -(-self.count // self.batch)

    def batch_items(self, k: int) -> range:
        return range(k * self.batch, min(self.count, (k + 1) * self.batch))

    def shard_batches(self, shard: Shard) -> range:
        return range(shard.index, self.num_batches, shard.count)

    def in_shard(self, i: int, shard: Shard) -> bool:
        return (i // self.batch) % shard.count == shard.index

    def shard_size(self, shard: Shard) -> int:
        """Items of the shard's batches (all full but the plan's last batch)."""
        batches = self.shard_batches(shard)
        short = self.num_batches * self.batch - self.count   # the last batch's missing items
        return len(batches) * self.batch - (short if batches and batches[-1] == self.num_batches - 1 else 0)
