"""The simulated network: per-message delay (so messages overtake each other), loss,
duplication and partitions that heal. Every decision is drawn from a seeded ``Rng``."""

from __future__ import annotations

from dataclasses import dataclass

from consensus.sim.rng import Rng
from consensus.types import ValidatorSet


@dataclass(frozen=True, slots=True)
class Partition:
    """From ``t_split`` to ``t_heal`` (ms), messages between different groups are lost."""

    groups: tuple[tuple[int, ...], ...]
    t_split: int
    t_heal: int

    def __post_init__(self) -> None:
        if not 0 <= self.t_split <= self.t_heal:
            raise ValueError(f"a partition needs 0 <= t_split <= t_heal, got {self.t_split}, {self.t_heal}")
        members = [i for g in self.groups for i in g]
        if len(members) != len(set(members)):
            raise ValueError("a validator is in two partition groups")

    def cut(self, now: int, src: int, dst: int) -> bool:
        if not self.t_split <= now < self.t_heal:
            return False
        return self._group(src) != self._group(dst)

    def _group(self, i: int) -> int:
        for g, members in enumerate(self.groups):
            if i in members:
                return g
        return -1  # in no group: alone on its side


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """``partition``: split the validators for a while. With ``groups``/``t_split``/
    ``t_heal`` left None, the split (no side holding a quorum) and its timing are drawn
    from the seed; set them to script one."""

    d_min: int = 1  # ms
    d_max: int = 20
    drop: float = 0.0  # probability that a message is lost
    duplicate: float = 0.0  # probability that a message is delivered twice
    partition: bool = False
    groups: tuple[tuple[int, ...], ...] | None = None
    t_split: int | None = None
    t_heal: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.d_min <= self.d_max:
            raise ValueError(f"delays need 0 <= d_min <= d_max, got {self.d_min}, {self.d_max}")
        for name in ("drop", "duplicate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} is a probability in [0, 1)")


def random_partition(rng: Rng, valset: ValidatorSet) -> tuple[tuple[int, ...], ...]:
    """Two or three groups of shuffled validators, none holding a quorum of the power
    (so nobody can decide while split)."""
    n = len(valset)
    for _ in range(100):
        order = list(range(n))
        rng.shuffle(order)
        k = 2 if n < 6 else rng.randint(2, 3)
        cuts = sorted(rng.sample(range(1, n), k - 1))
        groups = [tuple(sorted(order[a:b])) for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        if all(not valset.is_quorum(valset.power_of(set(g))) for g in groups):
            return tuple(groups)
    # Fall back on singletons: no single validator holds a quorum unless n == 1.
    return tuple((i,) for i in range(n))


def resolve_partition(config: NetworkConfig, rng: Rng, valset: ValidatorSet) -> Partition | None:
    if not config.partition or len(valset) < 2:
        return None
    groups = config.groups if config.groups is not None else random_partition(rng, valset)
    t_split = config.t_split if config.t_split is not None else rng.randint(0, 1000)
    t_heal = config.t_heal if config.t_heal is not None else t_split + rng.randint(500, 4000)
    return Partition(groups, t_split, t_heal)


class Network:
    def __init__(self, config: NetworkConfig, rng: Rng, partition: Partition | None) -> None:
        self.config, self.rng, self.partition = config, rng, partition
        self.sent = self.lost = self.cut = self.duplicated = 0

    def arrivals(self, now: int, src: int, dst: int) -> list[int]:
        """When the copies of one message sent now from ``src`` to ``dst`` arrive:
        none (lost or cut), one, or two (duplicated), each with its own delay."""
        c = self.config
        self.sent += 1
        if self.partition is not None and self.partition.cut(now, src, dst):
            self.cut += 1
            return []
        if c.drop and self.rng.random() < c.drop:
            self.lost += 1
            return []
        times = [now + self.rng.randint(c.d_min, c.d_max)]
        if c.duplicate and self.rng.random() < c.duplicate:
            self.duplicated += 1
            times.append(now + self.rng.randint(c.d_min, c.d_max))
        return times
