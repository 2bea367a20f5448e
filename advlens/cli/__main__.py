"""``python -m advlens.cli``: the ``advlens`` command."""
import sys

from . import main

sys.exit(main())
