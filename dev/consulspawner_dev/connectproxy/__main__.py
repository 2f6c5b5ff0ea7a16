"""``python -m consulspawner_dev.connectproxy``: the ``connectproxy`` command."""

import sys

from .cli import main

sys.exit(main())
