"""``python -m lookout``: the same as the ``lookout`` command."""

import sys

from lookout.gateway.cli.main import main

sys.exit(main())
