"""Named random streams: stable, distinct, independent of which other streams exist."""

from __future__ import annotations

import numpy as np
import pytest

from physlens.seeding import spawn_seeds, stream_seed, stream_seeds


def test_a_streams_seed_depends_only_on_the_study_seed_and_its_name():
    names = ["model init", "training batches", "random-init control", "probes trajectories"]
    seeds = stream_seeds(0, names)
    assert len(set(seeds.values())) == len(names)
    assert stream_seeds(0, names[:2] + ["a new analysis"])["model init"] == seeds["model init"]
    assert stream_seed(1, "model init") != seeds["model init"]
    # It is numpy's SeedSequence with the study seed and a hash of the name as entropy.
    expected = np.random.SeedSequence([0, 0, __import__("zlib").crc32(b"model init")]).generate_state(1, dtype=np.uint32)[0]
    assert seeds["model init"] == int(expected)


def test_large_study_seeds_use_every_bit():
    assert stream_seed(2**40, "x") != stream_seed(0, "x")


def test_bad_names_and_seeds_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        stream_seeds(0, ["a", "a"])
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        stream_seed(0, "")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        stream_seed(-1, "a")


def test_spawned_seed_sets_are_disjoint_reproducible_and_stable_when_sets_are_added():
    sizes = {"trained": 300, "random": 200, "widths": 50}
    seeds = spawn_seeds(7, sizes)
    assert {k: len(v) for k, v in seeds.items()} == sizes
    flat = [s for v in seeds.values() for s in v]
    assert len(set(flat)) == len(flat) and all(isinstance(s, int) and 0 <= s < 2**63 for s in flat)
    assert spawn_seeds(7, sizes) == seeds
    assert spawn_seeds(7, {**sizes, "extra": 10})["widths"] == seeds["widths"]  # appending a set changes nothing before it
    assert spawn_seeds(8, sizes)["trained"] != seeds["trained"]
    with pytest.raises(ValueError, match="non-empty mapping"):
        spawn_seeds(0, {})
    with pytest.raises(ValueError, match="positive integer"):
        spawn_seeds(0, {"a": 0})
