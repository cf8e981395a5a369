"""``python -m vlm ...``: the same as the ``vlm`` command."""

import sys

from vlm.cli.main import main

sys.exit(main())
