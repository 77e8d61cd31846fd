"""``python -m plait.providers.redis``: the ``plait`` command line."""

import sys

from ._cli import main

sys.exit(main())
