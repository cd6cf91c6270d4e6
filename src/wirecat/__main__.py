"""``python -m wirecat``: the same as the ``wirecat`` command."""

import sys

from .cli.main import main

sys.exit(main())
