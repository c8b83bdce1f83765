"""A compiled CPU kernel that trains one-hidden-layer ReLU networks with full-batch Adam, fused.

For each network the kernel runs every epoch while that network's data sits in cache: one pass
over the points computes the loss and all gradient sums in registers (networks wider than
:data:`ONE_PASS_MAX_HIDDEN` take a pass per group of hidden units), then Adam updates the
network's few parameters. The loop body is generated for the network's shape (inputs ``d_in``,
hidden units ``h``) so that every weight and every running sum is a scalar the compiler can keep
in a register and every point-wise step vectorises; numba compiles it and caches the machine code
on disk, so a shape is compiled once per machine, not once per run.

Parameters travel as one flat row per network, in the order of
:data:`physlens.models.mlp.PARAM_NAMES` with each tensor flattened row-major:
``W_in[d, j]`` at ``d*h + j``, ``b_in[j]`` at ``d_in*h + j``, ``W_out[j, 0]`` at ``(d_in + 1)*h + j``
and ``b_out`` last.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

FASTMATH = ("reassoc", "contract", "nsz")
"""LLVM flags of the kernel: sums may be reordered (so they vectorise) and multiply-adds fused, in the
pass over the data and in Adam's update alike, which stays within round-off of torch.optim.Adam.
NaN and infinity keep their meaning, so a diverging network still shows up as non-finite. The
kernel is a single function: with the pass over the data in a function of its own, a process that
compiled the kernel and one that loaded it from the cache trained to parameters that differed in
the last bits."""

MAX_HIDDEN_INPUTS = 256
"""Largest ``d_in * h`` the kernel is generated for. The kernel has a line per weight and per running
sum, and wide networks a pass over the points per group of units, so its compile time grows with the
width; wider networks use the eager step."""

_KERNEL = '''
@numba.njit(fastmath={fastmath}, cache=True, nogil=True)
def train_networks(theta, exp_avg, exp_avg_sq, x, y, consts, neg_step, bc2_sqrt, snap_at, losses, snaps):
    """Run every epoch of full-batch Adam for each network (row) of theta, in place.

    consts = [1 - beta1, beta2, 1 - beta2, eps, 2 / n, 1 / n] in theta's dtype; neg_step[e] and
    bc2_sqrt[e] are Adam's -lr / (1 - beta1**t) and sqrt(1 - beta2**t) at step t = e + 1, cast
    to theta's dtype as torch.optim.Adam casts them; snap_at[e] >= 0 copies network i's
    parameters to snaps[i, snap_at[e]] after epoch e; losses[network, e] is the MSE before step e.
    """
    n_params = theta.shape[1]
    grad = np.empty(n_params, theta.dtype)
    zero = theta.dtype.type(0)
    one_minus_beta1, beta2, one_minus_beta2, eps, two_over_n, one_over_n = (
        consts[0], consts[1], consts[2], consts[3], consts[4], consts[5])
    for net in range(theta.shape[0]):
        params, m, v = theta[net], exp_avg[net], exp_avg_sq[net]
{rows}
        y_net = y[net]
        for epoch in range(losses.shape[1]):
{passes}
            losses[net, epoch] = s_loss * one_over_n
            step, denom_scale = neg_step[epoch], bc2_sqrt[epoch]
            for k in range(n_params):
                # torch.optim.Adam (single-tensor): lerp, mul + addcmul, sqrt / bc2_sqrt + eps, addcdiv
                g = grad[k] * two_over_n
                m[k] = m[k] + one_minus_beta1 * (g - m[k])
                v[k] = v[k] * beta2 + one_minus_beta2 * g * g
                params[k] = params[k] + step * m[k] / (np.sqrt(v[k]) / denom_scale + eps)
            if snap_at[epoch] >= 0:
                snaps[net, snap_at[epoch]] = params
'''


def fused_unavailable_reason() -> str | None:
    """Why the fused kernel cannot run in this Python (``None`` when it can).

    numba is a dependency, but where it cannot install the eager torch step must keep working; it is
    imported only when a kernel is first compiled, so importing physlens stays fast.
    """
    if importlib.util.find_spec("numba") is None:
        return "numba is not installed (pip install numba)"
    return None


ONE_PASS_MAX_HIDDEN = 4
"""Widest hidden layer trained by one pass over the points per epoch. Each hidden unit adds four running
sums and four weights (at ``d_in = 2``) that the pass keeps in vector registers; past four units they
no longer fit and spill, so wider networks get :data:`GROUP_UNITS` units per pass (see
:func:`kernel_source`)."""

GROUP_UNITS = 4
"""Hidden units whose gradient sums one pass over the points gathers, in networks wider than
:data:`ONE_PASS_MAX_HIDDEN`."""


def kernel_source(d_in: int, d_hidden: int, group: int | None = None) -> str:
    """Python source of the fused training kernel for networks with ``d_in`` inputs and ``d_hidden`` units.

    Up to :data:`ONE_PASS_MAX_HIDDEN` units, one pass over the points per epoch computes the loss and every
    gradient sum. Wider networks take several passes, so that the sums of each stay in registers: the
    first computes each point's error ``e`` into a scratch array (with the loss and the output bias's
    sum), then each group of ``group`` units (:data:`GROUP_UNITS` by default; the last group may be
    smaller) recomputes its pre-activations and gathers its own gradient sums from the stored errors.
    """
    D, H = d_in, d_hidden
    w = lambda d, j: f"w_{d}_{j}"  # noqa: E731
    n_params = D * H + 2 * H + 1
    load = [f"{w(d, j)} = params[{d * H + j}]" for d in range(D) for j in range(H)]
    load += [f"b_{j} = params[{D * H + j}]" for j in range(H)]
    load += [f"v_{j} = params[{D * H + H + j}]" for j in range(H)]
    load += [f"c = params[{n_params - 1}]"]
    rows = [f"x_{d} = x[net, {d}]" for d in range(D)]
    inputs = [f"a_{d} = x_{d}[i]" for d in range(D)]

    def forward(units: range) -> list[str]:
        lines = []
        for j in units:
            lines.append(f"p_{j} = b_{j} + " + " + ".join(f"{w(d, j)} * a_{d}" for d in range(D)))
            lines.append(f"r_{j} = p_{j} if p_{j} > zero else zero")
        return lines

    def unit_sums(units: range) -> tuple[list[str], list[str], list[str]]:  # names, loop-body lines, stores
        names = [f"s_v_{j}" for j in units] + [f"s_b_{j}" for j in units] + [f"s_{w(d, j)}" for d in range(D) for j in units]
        body = []
        for j in units:
            # the ReLU's derivative at 0 is 0, as in autograd
            body += [f"s_v_{j} += r_{j} * e", f"q_{j} = v_{j} * e if p_{j} > zero else zero", f"s_b_{j} += q_{j}"]
            body += [f"s_{w(d, j)} += q_{j} * a_{d}" for d in range(D)]
        store = [f"grad[{d * H + j}] = s_{w(d, j)}" for d in range(D) for j in units]
        store += [f"grad[{D * H + j}] = s_b_{j}" for j in units]
        store += [f"grad[{D * H + H + j}] = s_v_{j}" for j in units]
        return names, body, store

    error = "e = c + " + " + ".join(f"v_{j} * r_{j}" for j in range(H)) + " - y_net[i]"
    if H <= (ONE_PASS_MAX_HIDDEN if group is None else group):
        names, sums_body, store = unit_sums(range(H))
        init = [f"{s} = zero" for s in ["s_loss", "s_c", *names]]
        body = inputs + forward(range(H)) + [error, "s_loss += e * e", "s_c += e"] + sums_body
        store += [f"grad[{n_params - 1}] = s_c"]
        return _render(f"with d_in = {D}, h = {H}", rows, load, [(ONE_PASS, init, body, store)])

    G = GROUP_UNITS if group is None else group
    if G < 1:
        raise ValueError(f"group must be a positive number of hidden units, got {G}")
    rows.append("err = np.empty(y.shape[1], theta.dtype)  # each point's error, built up and then read by the passes")
    groups = [range(j0, min(j0 + G, H)) for j0 in range(0, H, G)]
    span = lambda units: f"unit {units[0]}" if len(units) == 1 else f"units {units[0]}–{units[-1]}"  # noqa: E731
    output = lambda units: " + ".join(f"v_{j} * r_{j}" for j in units)  # noqa: E731
    passes = []
    for k, units in enumerate(groups[1:]):  # the output of every unit but the first group's, into err
        partial = f"err[i] = c + {output(units)} - y_net[i]" if k == 0 else f"err[i] += {output(units)}"
        comment = f"pass over the points: hidden {span(units)}'s share of each point's error, into err"
        passes.append((comment, [], inputs + forward(units) + [partial], []))
    for k, units in enumerate(groups):  # each group's gradient sums, from the errors
        names, sums_body, store = unit_sums(units)
        if k == 0:  # completes the errors, and with them the loss and the output bias's sum
            init = [f"{s} = zero" for s in ["s_loss", "s_c", *names]]
            body = inputs + forward(units) + [f"e = err[i] + {output(units)}", "err[i] = e", "s_loss += e * e", "s_c += e"]
            store += [f"grad[{n_params - 1}] = s_c"]
            comment = f"pass over the points: the errors completed with hidden {span(units)}, the loss and their gradient sums"
        else:
            init, body = [f"{s} = zero" for s in names], inputs + ["e = err[i]"] + forward(units)
            comment = f"pass over the points: hidden {span(units)}'s gradient sums (of d(err²/2)/dθ) in registers"
        passes.append((comment, init, body + sums_body, store))
    return _render(f"with d_in = {D}, h = {H}, {G} hidden units per pass", rows, load, passes)


ONE_PASS = "one pass over the points: the loss and every gradient sum (of d(err²/2)/dθ) in registers"


def _render(networks: str, rows: list[str], load: list[str], passes: list[tuple[str, list[str], list[str], list[str]]]) -> str:
    """The kernel module's source: ``_KERNEL`` filled with these generated lines at their depths, under a
    docstring naming the ``networks`` it trains.

    Each epoch loads the parameters (``load``) and then runs ``passes`` over the points in turn, each a
    ``(comment, init, body, after)``: the running sums set to zero, the loop body over point ``i`` and
    what follows the loop (the sums stored in ``grad``).
    """

    def indent(lines: list[str], depth: int) -> str:
        return "\n".join(" " * depth + line for line in lines)

    epoch = []
    for k, (comment, init, body, after) in enumerate(passes):
        epoch.append(indent([f"# {comment}"], 12))
        if k == 0:
            epoch.append(indent(load, 12))
        epoch += [indent(init, 12), indent(["for i in range(y_net.shape[0]):"], 12), indent(body, 16), indent(after, 12)]
    epoch = [lines for lines in epoch if lines]  # a pass with nothing to set up or to store
    kernel = _KERNEL.format(
        fastmath="{" + ", ".join(repr(flag) for flag in sorted(FASTMATH)) + "}",
        rows=indent(rows, 8),
        passes="\n".join(epoch),
    )
    header = f'"""Fused full-batch Adam for ReLU networks {networks} (generated by physlens)."""\n\nimport numba\nimport numpy as np\n'
    return header + kernel


MAX_DEEP_PARAMS = 128
"""Largest parameter count the deep kernel (:func:`deep_kernel_source`) is generated for, for the same
reason as :data:`MAX_HIDDEN_INPUTS`; larger networks use the eager step."""


def deep_param_count(widths: Sequence[int]) -> int:
    """Parameters of a ReLU network with these layer widths (inputs first, output last)."""
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def deep_kernel_source(widths: Sequence[int]) -> str:
    """Python source of the fused training kernel for ReLU networks with layer widths ``widths``
    (``[d_in, h_1, …, h_L, 1]``: a ReLU after every layer but the last).

    Parameters travel as one flat row per network, layer after layer, each layer's ``W`` ``[fan_in,
    fan_out]`` row-major followed by its ``b``, the order of ``DeepMLPEnsemble.layer_parameters``.
    The pass over the points is the forward pass, then the backward pass from the error ``e`` (a
    hidden unit passes its gradient on only where its pre-activation is positive: the ReLU's
    derivative at 0 is 0, as in autograd); every running sum is of d(e²/2)/dθ.
    """
    widths = [int(w) for w in widths]
    if len(widths) < 3 or widths[-1] != 1 or min(widths) < 1:
        raise ValueError(f"widths must be [d_in, hidden..., 1] with at least one hidden layer, got {widths}")
    n_layers = len(widths) - 1
    w = lambda l, i, j: f"w{l}_{i}_{j}"  # noqa: E731 - layer l, input i, output j
    bias = lambda l, j: f"b{l}_{j}"  # noqa: E731
    offsets, offset = [], 0
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        offsets.append(offset)
        offset += fan_in * fan_out + fan_out
    n_params = offset

    def index_of(l: int, i: int | None, j: int) -> int:  # i None: the bias
        fan_in, fan_out = widths[l], widths[l + 1]
        return offsets[l] + (fan_in * fan_out + j if i is None else i * fan_out + j)

    names = [(index_of(l, i, j), w(l, i, j)) for l in range(n_layers) for i in range(widths[l]) for j in range(widths[l + 1])]
    names += [(index_of(l, None, j), bias(l, j)) for l in range(n_layers) for j in range(widths[l + 1])]
    names.sort()
    load = [f"{name} = params[{k}]" for k, name in names]
    rows = [f"x_{d} = x[net, {d}]" for d in range(widths[0])]
    init = ["s_loss = zero"] + [f"s_{name} = zero" for _, name in names]
    body = [f"h0_{d} = x_{d}[i]" for d in range(widths[0])]
    for l in range(n_layers - 1):  # hidden layers: p{l+1} pre-activation, h{l+1} after the ReLU
        for j in range(widths[l + 1]):
            body.append(f"p{l + 1}_{j} = {bias(l, j)} + " + " + ".join(f"{w(l, i, j)} * h{l}_{i}" for i in range(widths[l])))
            body.append(f"h{l + 1}_{j} = p{l + 1}_{j} if p{l + 1}_{j} > zero else zero")
    last = n_layers - 1
    body.append(f"g{n_layers}_0 = {bias(last, 0)} + " + " + ".join(f"{w(last, i, 0)} * h{last}_{i}" for i in range(widths[last])) + " - y_net[i]")
    body.append(f"s_loss += g{n_layers}_0 * g{n_layers}_0")
    for l in range(n_layers - 1, -1, -1):  # g{l+1}: d(e²/2)/d(pre-activation of layer l's outputs)
        for j in range(widths[l + 1]):
            body.append(f"s_{bias(l, j)} += g{l + 1}_{j}")
            body += [f"s_{w(l, i, j)} += h{l}_{i} * g{l + 1}_{j}" for i in range(widths[l])]
        if l:
            for i in range(widths[l]):
                back = " + ".join(f"{w(l, i, j)} * g{l + 1}_{j}" for j in range(widths[l + 1]))
                body.append(f"g{l}_{i} = {back} if p{l}_{i} > zero else zero")
    store = [f"grad[{k}] = s_{name}" for k, name in names]

    shape = " → ".join(map(str, widths))
    return _render(f"of widths {shape}, {n_params} parameters", rows, load, [(ONE_PASS, init, body, store)])


@functools.lru_cache(maxsize=None)
def load_deep_kernel(widths: tuple[int, ...]) -> ModuleType:
    """The compiled module for networks of these layer widths (cached like :func:`load_kernel`)."""
    return _load_source("physlens_fused_deep_" + "_".join(map(str, widths)), deep_kernel_source(widths))


def train_deep_networks(
    theta: np.ndarray,
    inputs_t: np.ndarray,
    targets: np.ndarray,
    *,
    widths: Sequence[int],
    epochs: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    losses: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    first_epoch: int = 0,
) -> None:
    """Train networks of layer widths ``widths`` (``theta`` ``[network, param]``, laid out as in
    :func:`deep_kernel_source`) in place, epochs ``first_epoch …`` as :func:`train_networks` does for
    one hidden layer."""
    dtype = theta.dtype.type
    n = targets.shape[1]
    consts = np.array([1 - beta1, beta2, 1 - beta2, eps, 2.0 / n, 1.0 / n], dtype=np.float64).astype(dtype)
    neg_step, bc2_sqrt = adam_schedule(epochs, lr, beta1, beta2, dtype, first_epoch)
    no_snaps = np.full(epochs, -1, dtype=np.int64)
    load_deep_kernel(tuple(int(w) for w in widths)).train_networks(
        theta, exp_avg, exp_avg_sq, inputs_t, targets, consts, neg_step, bc2_sqrt, no_snaps, losses,
        np.zeros((theta.shape[0], 0, theta.shape[1]), theta.dtype),
    )  # fmt: skip


def prepare_deep(widths: Sequence[int], dtype: np.dtype) -> None:
    """Compile (or load from the cache) the deep kernel for these widths and this dtype, on one tiny network."""
    dtype = np.dtype(dtype)
    theta = np.zeros((1, deep_param_count(widths)), dtype)
    train_deep_networks(
        theta, np.zeros((1, widths[0], 1), dtype), np.zeros((1, 1), dtype), widths=widths, epochs=1, lr=1e-3,
        beta1=0.9, beta2=0.999, eps=1e-8, losses=np.zeros((1, 1), dtype),
        exp_avg=np.zeros_like(theta), exp_avg_sq=np.zeros_like(theta),
    )  # fmt: skip


def _cache_dir() -> Path:
    """Where generated kernels and numba's machine code live: $PHYSLENS_CACHE_DIR, else the user cache."""
    root = os.environ.get("PHYSLENS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "physlens"
    )
    path = Path(root) / "fused"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
    except OSError:  # read-only home: compile every run instead of caching
        path = Path(tempfile.mkdtemp(prefix="physlens-fused-"))
    return path


@functools.lru_cache(maxsize=None)
def load_kernel(d_in: int, d_hidden: int, group: int | None = None) -> ModuleType:
    """The compiled module for this shape (written to the cache on first use, compiled lazily by numba);
    ``group`` as in :func:`kernel_source`."""
    return _load_source(f"physlens_fused_d{d_in}_h{d_hidden}", kernel_source(d_in, d_hidden, group))


def _load_source(stem: str, source: str) -> ModuleType:
    """Import generated kernel ``source`` from a file in the cache named after ``stem`` and its digest."""
    reason = fused_unavailable_reason()
    if reason:
        raise RuntimeError(f"the fused kernel cannot run: {reason}")
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    name = f"{stem}_{digest}"
    path = _cache_dir() / f"{name}.py"
    if not path.exists() or path.read_text() != source:
        # written atomically: several processes may generate the same kernel at once
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
            handle.write(source)
        os.replace(handle.name, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba's cache finds the module's globals by name when it loads machine code
    spec.loader.exec_module(module)
    return module


def adam_schedule(
    epochs: int, lr: float, beta1: float, beta2: float, dtype: type[np.floating] | np.dtype, first_epoch: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Adam's per-step scalars as torch.optim.Adam computes them, in double and then cast to ``dtype``, for
    ``epochs`` epochs from ``first_epoch`` on (Adam's steps ``first_epoch + 1 …``)."""
    steps = range(first_epoch + 1, first_epoch + epochs + 1)
    neg_step = np.array([-(lr / (1 - beta1**t)) for t in steps], dtype=np.float64)
    bc2_sqrt = np.array([(1 - beta2**t) ** 0.5 for t in steps], dtype=np.float64)
    return neg_step.astype(dtype), bc2_sqrt.astype(dtype)


def train_networks(
    theta: np.ndarray,
    inputs_t: np.ndarray,
    targets: np.ndarray,
    *,
    d_in: int,
    d_hidden: int,
    epochs: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    snap_at: np.ndarray,
    losses: np.ndarray,
    snaps: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    first_epoch: int = 0,
    group: int | None = None,
) -> None:
    """Train networks ``theta`` ``[network, param]`` in place (see the module docstring for the layout).

    ``inputs_t`` is ``[network, d_in, n]`` and ``targets`` ``[network, n]``, both C-contiguous in
    ``theta``'s dtype; ``losses`` ``[network, epoch]`` and ``snaps`` ``[network, snapshot, param]``
    receive the per-epoch MSE and the snapshots marked in ``snap_at``. ``exp_avg``/``exp_avg_sq``
    hold Adam's moments (zeros for a fresh optimiser). The call runs epochs ``first_epoch …
    first_epoch + epochs − 1`` of a longer run (``snap_at`` and ``losses`` cover those alone): a run
    cut into calls ends with the same bits as one call, since every state the kernel carries from one
    epoch to the next is in ``theta`` and the moments. ``group`` picks the hidden units per pass over
    the points (see :func:`kernel_source`; the default suits the width).
    """
    dtype = theta.dtype.type
    n = targets.shape[1]
    consts = np.array([1 - beta1, beta2, 1 - beta2, eps, 2.0 / n, 1.0 / n], dtype=np.float64).astype(dtype)
    neg_step, bc2_sqrt = adam_schedule(epochs, lr, beta1, beta2, dtype, first_epoch)
    load_kernel(d_in, d_hidden, group).train_networks(
        theta, exp_avg, exp_avg_sq, inputs_t, targets, consts, neg_step, bc2_sqrt, snap_at, losses, snaps
    )


def prepare(d_in: int, d_hidden: int, dtype: np.dtype, group: int | None = None) -> None:
    """Compile (or load from the cache) the kernel for this shape and dtype, on one tiny network."""
    dtype = np.dtype(dtype)
    n_params = d_in * d_hidden + 2 * d_hidden + 1
    theta = np.zeros((1, n_params), dtype)
    train_networks(
        theta, np.zeros((1, d_in, 1), dtype), np.zeros((1, 1), dtype), d_in=d_in, d_hidden=d_hidden, epochs=1,
        lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, snap_at=np.full(1, -1, dtype=np.int64),
        losses=np.zeros((1, 1), dtype), snaps=np.zeros((1, 1, n_params), dtype),
        exp_avg=np.zeros_like(theta), exp_avg_sq=np.zeros_like(theta), group=group,
    )  # fmt: skip
