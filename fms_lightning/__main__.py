"""``python -m fms_lightning``: the ``fms-lightning`` command."""

import sys

from fms_lightning.cli import main

sys.exit(main())
