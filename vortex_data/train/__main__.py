"""``python -m vortex_data.train [train|eval] ...`` (train is the default command)."""

import sys

from vortex_data.train.commands import main

sys.exit(main())
