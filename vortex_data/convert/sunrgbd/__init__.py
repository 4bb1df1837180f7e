"""SUN RGB-D -> uniform samples: the converter (:mod:`.converter`) over the dataset's on-disk
layout (:mod:`.files`). See ``docs/sunrgbd.md``."""

from .converter import SunRgbdConverter
from .files import (DEPTH_MODES, MAX_DEPTH_MM, NOT_IN_SPLIT, NYU_OVERLAP_REASON, NYU_OVERLAP_SUBSET, SENSOR_SUBSETS,
                    find_frame_folders, locate_frame_files, parse_intrinsics, parse_rtilt, read_depth_png, read_rgb,
                    read_split_file, rotate_left_3, rotate_right_3)

__all__ = ["DEPTH_MODES", "MAX_DEPTH_MM", "NOT_IN_SPLIT", "NYU_OVERLAP_REASON", "NYU_OVERLAP_SUBSET", "SENSOR_SUBSETS",
           "SunRgbdConverter", "find_frame_folders", "locate_frame_files", "parse_intrinsics", "parse_rtilt",
           "read_depth_png", "read_rgb", "read_split_file", "rotate_left_3", "rotate_right_3"]
