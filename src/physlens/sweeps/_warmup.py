"""Imported once by the local worker pool's fork server, so every forked worker starts warm.

A trial's first optimizer step imports ``torch._dynamo`` (seconds), and its first figure loads
matplotlib's fonts; done here, before the server forks, each worker inherits them instead of
paying for them again. Nothing here starts a thread (torch runs no operation), so forking stays safe.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch._dynamo  # noqa: E402,F401  (what torch.optim imports on first use)

_figure, _axes = plt.subplots()
_axes.set_title("warm-up 0.1")
_axes.set_xlabel(r"$\hat{y} - y$ (mathtext: its parser is built on first use)")
_axes.plot([1, 10, 100], [1e-6, 1e-3, 1.0], label="a")
_axes.set_yscale("log")  # log-axis tick labels are mathtext too
_axes.legend()
_figure.savefig(io.BytesIO(), format="png", bbox_inches="tight")
plt.close(_figure)
