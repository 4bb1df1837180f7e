"""Converters over the DIODE fixture for fault tests: SlowDiode sleeps per frame, so a test can
kill a build mid-way or overlap two array tasks ($VORTEX_TEST_FRAME_DELAY sets the sleep, seconds,
default 0.15); CrashingDiode dies on one frame as a segfault in native code would."""

import os
import signal
import time

from vortex_data.convert.diode import DiodeConverter


class SlowDiode(DiodeConverter):
    def load(self, ref):
        time.sleep(float(os.environ.get("VORTEX_TEST_FRAME_DELAY", "0.15")))
        return super().load(ref)


class CrashingDiode(DiodeConverter):
    def load(self, ref):
        if ref.frame_id.endswith("_010_010"):
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().load(ref)
