"""Independent, named random streams derived from one study seed with ``numpy.random.SeedSequence``.

Every set of models, controls and data in a study draws from its own stream: the seed of a stream
is a function of the study seed and the stream's name only (:func:`stream_seed`), so adding a new
analysis never shifts the draws of an existing one, and no two named sets can share an
initialisation by accident. :func:`spawn_seeds` gives whole sets of networks their seeds at once.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from physlens._validation import check_nonnegative_int, check_positive_int


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


def spawn_seeds(root: int, sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Independent network seeds for several named sets, from one root seed.

    ``numpy.random.SeedSequence(root).spawn`` gives every set its own child sequence (in the order
    of ``sizes``), and each child draws that set's 63-bit seeds. Sets therefore never share a seed
    (and so never share an initialisation or a data split), however many networks each holds;
    adding a set at the end leaves the earlier sets unchanged. Raises if two seeds coincide
    anywhere, which at 63 bits would be a broken generator rather than bad luck.
    """
    root = check_nonnegative_int("root", root)
    if not isinstance(sizes, Mapping) or not sizes:
        raise ValueError(f"sizes must be a non-empty mapping from set name to number of seeds, got {sizes!r}")
    counts = {str(name): check_positive_int(f"sizes[{name!r}]", n) for name, n in sizes.items()}
    children = np.random.SeedSequence(root).spawn(len(counts))
    seeds = {
        name: [int(s) for s in child.generate_state(n, dtype=np.uint64) >> np.uint64(1)]
        for (name, n), child in zip(counts.items(), children)
    }
    flat = [s for values in seeds.values() for s in values]
    if len(set(flat)) != len(flat):
        raise RuntimeError(f"spawn_seeds({root}) produced a repeated seed; the seed sequence is broken")
    return seeds


__all__ = ["spawn_seeds", "stream_seed", "stream_seeds"]
