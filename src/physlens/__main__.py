"""``python -m physlens``: the ``physlens`` command (see :mod:`physlens.cli`)."""

import sys

from physlens.cli import main

if __name__ == "__main__":  # importing the module (as a package walk does) runs nothing
    sys.exit(main())
