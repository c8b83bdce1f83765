"""The module the local worker pool's fork server imports to warm up before it forks.

multiprocessing's fork-server preload takes module names, not functions, so importing this module is
the call of :func:`physlens.sweeps._warmup.warm_up`; nothing else imports it.
"""

from __future__ import annotations

from physlens.sweeps._warmup import warm_up

warm_up()
