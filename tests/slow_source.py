"""A converter over the DIODE fixture that sleeps per frame, so a test can kill a build mid-way
or overlap two array tasks. $VORTEX_TEST_FRAME_DELAY sets the sleep (seconds, default 0.15)."""

import os
import time

from vortex_data.sources.diode import DiodeConverter


class SlowDiode(DiodeConverter):
    def load(self, ref):
        time.sleep(float(os.environ.get("VORTEX_TEST_FRAME_DELAY", "0.15")))
        return super().load(ref)
