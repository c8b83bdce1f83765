"""Warm-up for the local worker pool's fork server, so every forked worker starts warm.

A trial's first optimizer step imports ``torch._dynamo`` (seconds), and its first figure loads
matplotlib's fonts and builds its mathtext parser; done once in the fork server, before it forks,
each worker inherits them instead of paying for them again. Nothing here starts a thread (torch runs
no operation), so forking stays safe.
"""

from __future__ import annotations

import io


def warm_up() -> None:
    """Import ``torch._dynamo`` and draw and save one small figure (mathtext and a log axis), then discard it.

    The figure is a bare :class:`~matplotlib.figure.Figure`, not a pyplot one, so no backend is
    selected: a fork server must not open a display connection its workers would share.
    """
    import torch._dynamo  # noqa: F401  (what torch.optim imports on first use)
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.subplots()
    axes.set_title("warm-up 0.1")
    axes.set_xlabel(r"$\hat{y} - y$ (mathtext: its parser is built on first use)")
    axes.plot([1, 10, 100], [1e-6, 1e-3, 1.0], label="a")
    axes.set_yscale("log")  # log-axis tick labels are mathtext too
    axes.legend()
    figure.savefig(io.BytesIO(), format="png", bbox_inches="tight")
