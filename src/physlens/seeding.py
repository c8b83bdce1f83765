"""Independent, named random streams derived from one study seed with ``numpy.random.SeedSequence``.

Every set of models, controls and data in a study draws from its own stream: the seed of a stream
is a function of the study seed and the stream's name only, so adding a new analysis never shifts
the draws of an existing one, and no two named sets can share an initialisation by accident.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from physlens._validation import check_nonnegative_int


def stream_seed(seed: int, name: str) -> int:
    """The seed of stream ``name`` under study seed ``seed``: 32 bits from ``SeedSequence([seed, crc32(name)])``."""
    seed = check_nonnegative_int("seed", seed)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    words = [seed & 0xFFFFFFFF, seed >> 32, zlib.crc32(name.encode("utf-8"))]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0])


def stream_seeds(seed: int, names: Sequence[str]) -> dict[str, int]:
    """Seeds of several named streams at once; names must be distinct, and so are their seeds."""
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"stream names must be distinct, got {names}")
    seeds = {name: stream_seed(seed, name) for name in names}
    if len(set(seeds.values())) != len(seeds):  # a 32-bit collision: vanishingly rare, but never silent
        raise ValueError(f"two of the streams {names} drew the same seed under study seed {seed}; rename one")
    return seeds


__all__ = ["stream_seed", "stream_seeds"]
