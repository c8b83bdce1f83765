"""Activation patching on continuous inputs, through transformer_lens.patching."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.patching import PatchingResult

from physlens.models import OscillatorTransformer, TransformerConfig
from physlens.probes.patching import patching_grid, patching_pairs, patching_sweep, recovery, recovery_metric
from physlens.systems import OscillatorSystem, Uniform


@pytest.fixture
def model() -> OscillatorTransformer:
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, causal=False, attn_only=False, dtype="float64")
    return OscillatorTransformer(cfg).eval()


@pytest.fixture
def pairs():
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), gamma=Uniform(0.0, 0.2), dtype="float64")
    return patching_pairs(system, 12, 8, vary="omega0", seed=0)


def test_pairs_share_initial_state_and_differ_in_omega0(pairs):
    clean, corrupted = pairs
    torch.testing.assert_close(clean.states[:, 0], corrupted.states[:, 0])
    torch.testing.assert_close(clean.gamma, corrupted.gamma)
    assert bool(((clean.omega0 - corrupted.omega0).abs() >= 0.5).all())


def test_patching_every_position_recovers_clean_output_exactly(model, pairs):
    clean, corrupted = pairs
    for site in ("resid_pre", "resid_mid"):  # the whole residual stream fixes everything after it
        result = patching_sweep(model, clean.states, corrupted.states, site=site, per_position=False, output_position=None)
        assert isinstance(result, PatchingResult)
        torch.testing.assert_close(result.values, torch.ones_like(result.values))
    result = patching_sweep(model, clean.states, corrupted.states, site="resid_post", per_position=False)
    torch.testing.assert_close(result.values, torch.ones_like(result.values))  # layer 0's output is layer 1's input
    partial = patching_sweep(model, clean.states, corrupted.states, site="attn_out", per_position=False)
    assert bool((partial.values < 1 - 1e-6).all())  # one write leaves the corrupted embedding in the stream
    torch.testing.assert_close(result.baseline, torch.zeros_like(result.baseline))


def test_per_position_cells_and_statistics(model, pairs):
    clean, corrupted = pairs
    result = patching_sweep(model, clean.states, corrupted.states, site="attn_out", positions=[0, 3, 7])
    assert list(result.index_df.columns) == ["layer", "pos"] and len(result.index_df) == 6
    assert result.values.shape == (6, 12)
    # position 0 holds the shared initial state in layer 0's input, but attention has mixed it already
    grid, columns = patching_grid(result)
    assert columns == ["layer", "pos"] and grid.shape == (2, 3)
    assert result.stderr().shape == (6,)
    low, high = result.bootstrap_ci(n_resamples=50)
    assert bool((low <= high).all())
    assert result.permutation_pvalue(n_permutations=50).shape == (6,)


def test_window_one_model_patching_a_position_recovers_that_position_only():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, attn_window=1, dtype="float64")
    model = OscillatorTransformer(cfg).eval()
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    clean, corrupted = patching_pairs(system, 6, 8, seed=1)
    last = patching_sweep(model, clean.states, corrupted.states, site="resid_pre", positions=[6, 7], layers=[1])
    torch.testing.assert_close(last.values[1], torch.ones(6, dtype=last.values.dtype))  # pos 7 drives the last output
    torch.testing.assert_close(last.values[0], torch.zeros(6, dtype=last.values.dtype))


def test_recovery_and_errors(model, pairs):
    clean, corrupted = pairs
    c, k = torch.zeros(3, 2), torch.ones(3, 2)
    torch.testing.assert_close(recovery(c, c, k), torch.ones(3))
    torch.testing.assert_close(recovery(k, c, k), torch.zeros(3))
    with pytest.raises(ValueError, match="identical predictions"):
        patching_sweep(model, clean.states, clean.states)
    with pytest.raises(ValueError, match="site must be one of"):
        patching_sweep(model, clean.states, corrupted.states, site="embed")
    with pytest.raises(ValueError, match="out of range"):
        patching_sweep(model, clean.states, corrupted.states, positions=[9])
    with pytest.raises(ValueError, match="layers must lie"):
        patching_sweep(model, clean.states, corrupted.states, layers=[2])
    with pytest.raises(ValueError, match="nothing to corrupt"):
        patching_pairs(OscillatorSystem(dtype="float64"), 4, 8, seed=0)


# TransformerLens's named sweeps, positions counted on axis 1, against a hand-written loop --------------

from itertools import product  # noqa: E402

from physlens.probes import patching as pl_patching  # noqa: E402

_SWEEPS = {  # physlens name -> (hook, axes of the grid)
    "get_act_patch_resid_pre": ("hook_resid_pre", ("layer", "pos")),
    "get_act_patch_resid_mid": ("hook_resid_mid", ("layer", "pos")),
    "get_act_patch_attn_out": ("hook_attn_out", ("layer", "pos")),
    "get_act_patch_mlp_out": ("hook_mlp_out", ("layer", "pos")),
    "get_act_patch_attn_head_out_by_pos": ("attn.hook_z", ("layer", "pos", "head")),
    "get_act_patch_attn_head_q_by_pos": ("attn.hook_q", ("layer", "pos", "head")),
    "get_act_patch_attn_head_k_by_pos": ("attn.hook_k", ("layer", "pos", "head")),
    "get_act_patch_attn_head_v_by_pos": ("attn.hook_v", ("layer", "pos", "head")),
    "get_act_patch_attn_head_pattern_by_pos": ("attn.hook_pattern", ("layer", "head", "dest")),
    "get_act_patch_attn_head_pattern_dest_src_pos": ("attn.hook_pattern", ("layer", "head", "dest", "src")),
    "get_act_patch_attn_head_out_all_pos": ("attn.hook_z", ("layer", "head_all")),
    "get_act_patch_attn_head_q_all_pos": ("attn.hook_q", ("layer", "head_all")),
    "get_act_patch_attn_head_k_all_pos": ("attn.hook_k", ("layer", "head_all")),
    "get_act_patch_attn_head_v_all_pos": ("attn.hook_v", ("layer", "head_all")),
    "get_act_patch_attn_head_pattern_all_pos": ("attn.hook_pattern", ("layer", "pattern_head")),
}


def _hand_loop(model, corrupted, clean_cache, metric, hook, axes):
    """Patch one cell at a time with explicit indexing; return the metric per cell and example."""
    sizes = {"layer": model.cfg.n_layers, "pos": corrupted.shape[1], "dest": corrupted.shape[1], "src": corrupted.shape[1],
             "head": model.cfg.n_heads, "head_all": model.cfg.n_heads, "pattern_head": model.cfg.n_heads}
    grid = torch.zeros([sizes[a] for a in axes] + [corrupted.shape[0]], dtype=torch.float64)
    for cell in product(*(range(sizes[a]) for a in axes)):
        at = dict(zip(axes, cell))
        if "dest" in at:  # [batch, head, dest, src]
            index = (slice(None), at["head"], at["dest"]) + ((at["src"],) if "src" in at else ())
        elif "pattern_head" in at:
            index = (slice(None), at["pattern_head"])
        elif "head_all" in at:  # [batch, pos, head, d_head]
            index = (slice(None), slice(None), at["head_all"])
        elif "head" in at:
            index = (slice(None), at["pos"], at["head"])
        else:  # [batch, pos, d_model]
            index = (slice(None), at["pos"])
        name = f"blocks.{at['layer']}.{hook}"

        def patch(activation, hook, index=index, name=name):
            patched = activation.clone()
            patched[index] = clean_cache[name][index]
            return patched

        with torch.no_grad():
            grid[cell] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)]))
    return grid


@pytest.fixture(scope="module")
def tl_setup():
    cfg = TransformerConfig(d_model=4, n_layers=2, n_heads=2, d_head=2, n_ctx=8, causal=False, attn_only=False, dtype="float64", seed=11)
    model = OscillatorTransformer(cfg)
    system = OscillatorSystem(omega0=Uniform(1.0, 4.0), dtype="float64")
    clean, corrupted = patching_pairs(system, 4, 5, seed=3)
    _, cache = model.run_with_cache(clean.states)
    return model, corrupted.states, cache


@pytest.mark.parametrize("name", list(_SWEEPS))
def test_physlens_named_sweeps_match_a_hand_written_loop(tl_setup, name):
    model, corrupted, cache = tl_setup
    hook, axes = _SWEEPS[name]

    def per_example(out):
        return out[:, -1].norm(dim=-1)

    expected = _hand_loop(model, corrupted, cache, per_example, hook, axes)
    sweep = getattr(pl_patching, name)
    result = sweep(model, corrupted, cache, per_example, reduce="none", baseline=True)
    assert isinstance(result, PatchingResult) and len(result.axis_names) == len(axes)
    assert result.values.shape == expected.shape  # positions counted on axis 1: 5, not the 2 components
    torch.testing.assert_close(result.values.double(), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.baseline.double(), per_example(model(corrupted)).detach(), atol=1e-6, rtol=0)
    scalar = sweep(model, corrupted, cache, lambda out: per_example(out).mean())
    torch.testing.assert_close(scalar.double(), expected.mean(-1), atol=1e-6, rtol=0)
    values, index_df = sweep(model, corrupted, cache, lambda out: per_example(out).mean(), return_index_df=True)
    assert len(index_df) == values.numel()


def test_physlens_every_sweeps_stack_the_single_sweeps(tl_setup):
    model, corrupted, cache = tl_setup

    def metric(out):
        return out[:, -1, 1].mean()

    block = pl_patching.get_act_patch_block_every(model, corrupted, cache, metric)
    assert block.shape == (3, 2, 5)
    torch.testing.assert_close(block[2], pl_patching.get_act_patch_mlp_out(model, corrupted, cache, metric))
    by_pos = pl_patching.get_act_patch_attn_head_by_pos_every(model, corrupted, cache, metric)
    assert by_pos.shape == (5, 2, 5, 2)
    pattern = pl_patching.get_act_patch_attn_head_pattern_by_pos(model, corrupted, cache, metric)  # [layer, head, dest]
    torch.testing.assert_close(by_pos[4], pattern.transpose(1, 2))
    every = pl_patching.get_act_patch_attn_head_all_pos_every(model, corrupted, cache, lambda out: out[:, -1, 1], reduce="none", baseline=True)
    assert every.axis_names == ["patch_type", "layer", "head"] and every.values.shape == (5, 2, 2, 4)
    assert every.patch_type_names == ["out", "q", "k", "v", "pattern"]
    torch.testing.assert_close(every.values[1], pl_patching.get_act_patch_attn_head_q_all_pos(model, corrupted, cache, lambda out: out[:, -1, 1], reduce="none").values)
    grid, columns = patching_grid(pl_patching.get_act_patch_resid_pre(model, corrupted, cache, lambda out: out[:, -1, 1], reduce="none"))
    assert columns == ["layer", "pos"] and grid.shape == (2, 5)
    attn_only = OscillatorTransformer(TransformerConfig(d_model=4, n_ctx=8, dtype="float64"))
    with pytest.raises(ValueError, match="attention-only"):
        pl_patching.get_act_patch_block_every(attn_only, corrupted, cache, metric)


def test_new_sites_match_a_hand_written_recovery_loop(model, pairs):
    clean, corrupted = pairs
    _, cache = model.run_with_cache(clean.states)
    reference = recovery_metric(model, clean.states, corrupted.states, -1)
    for site, hook, axes in (("q", "attn.hook_q", ("layer", "pos", "head")), ("post", "mlp.hook_post", ("layer", "pos")),
                             ("pattern", "attn.hook_pattern", ("layer", "head", "dest"))):
        result = patching_sweep(model, clean.states, corrupted.states, site=site)
        grid = _hand_loop(model, corrupted.states, cache, reference, hook, axes)
        if site == "pattern":  # the sweep's cells are (layer, query position, head)
            grid = grid.permute(0, 2, 1, 3)
        # TransformerLens stores patching results in float32
        torch.testing.assert_close(result.values.double(), grid.reshape(-1, grid.shape[-1]), atol=1e-6, rtol=0)


@pytest.mark.unchecked_types
def test_sweep_with_a_custom_metric(model, pairs):
    clean, corrupted = pairs
    result = patching_sweep(model, clean.states, corrupted.states, site="resid_pre", per_position=False, metric=lambda out: out[:, 3, 0])
    # layer 0's whole input is the clean one (values are TransformerLens's float32)
    torch.testing.assert_close(result.values[0].double(), model(clean.states)[:, 3, 0].detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(result.baseline.double(), model(corrupted.states)[:, 3, 0].detach(), atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="metric must be a function"):
        patching_sweep(model, clean.states, corrupted.states, metric=3)


def test_group_patching_matches_a_hand_written_loop_and_recovers_fully_with_every_position():
    from physlens.probes.patching import group_patching, recovery

    cfg = TransformerConfig(d_model=6, n_layers=2, n_heads=2, d_head=3, n_ctx=8, causal=True, attn_only=False, dtype="float64", seed=4)
    model = OscillatorTransformer(cfg).eval()
    system = OscillatorSystem(omega0={"range": [1.0, 4.0]}, gamma=0.1, dtype="float64")
    clean, corrupted = system.sample_swap_pairs(10, 8, seed=5)
    result = group_patching(model, clean.states, corrupted.states, {"context": list(range(7)), "last": [7], "all": list(range(8))})
    # Patching every position at any layer's input restores the clean run exactly.
    torch.testing.assert_close(result.mean("all"), torch.ones(2, dtype=torch.float64))
    with torch.no_grad():
        clean_out, corrupted_out = model(clean.states), model(corrupted.states)
        _, cache = model.run_with_cache(clean.states)
        for layer in range(2):
            name = f"blocks.{layer}.hook_resid_pre"

            def patch(activation, hook):
                activation[:, :7] = cache[name][:, :7]
                return activation

            patched = model.run_with_hooks(corrupted.states, fwd_hooks=[(name, patch)])
            expected = recovery(patched[:, -1], clean_out[:, -1], corrupted_out[:, -1])
            torch.testing.assert_close(result.recovery["context"][layer], expected)
    assert set(result.to_dict()["mean"]) == {"context", "last", "all"}
