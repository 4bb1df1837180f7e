"""A converter over the DIODE fixture that sleeps per frame, so a test can kill a build mid-way."""

import time

from vortex_data.sources.diode import DiodeConverter


class SlowDiode(DiodeConverter):
    def load(self, ref):
        time.sleep(0.15)
        return super().load(ref)
