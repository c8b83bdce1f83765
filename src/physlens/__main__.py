"""``python -m physlens``: the ``physlens`` command (see :mod:`physlens.cli`)."""

import sys

from physlens.cli import main

sys.exit(main())
