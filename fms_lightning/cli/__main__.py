"""``python -m fms_lightning.cli``: the ``fms-lightning`` command."""

import sys

from fms_lightning.cli import main

sys.exit(main())
