"""Orbbec Femto Bolt recordings (docs/femto.md): the converter and one reader per recording kind.

``converter`` is the ``--dataset femto`` converter; ``mkv`` (k4arecorder Matroska), ``bag``
(Orbbec SDK / ROS bags; ``orbbec_messages`` parses the Orbbec frame messages) and ``dump``
(frame folders) read a recording into captures, defined in ``recording``; ``calib`` holds the
cameras' calibration in every form a recording carries it.
"""

from .converter import FemtoConverter, open_recording

__all__ = ["FemtoConverter", "open_recording"]
