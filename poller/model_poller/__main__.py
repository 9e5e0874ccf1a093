"""``python -m model_poller``."""

import sys

from model_poller.cli import main

sys.exit(main())
