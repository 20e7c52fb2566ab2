"""``python -m shapshift …``: the command line (so that ``accelerate launch -m shapshift run …`` works)."""

import sys

from .cli import main

sys.exit(main())
