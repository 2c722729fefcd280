"""cgroupfs primitives: where the hierarchies are, and how to read and write their files.

Nothing here knows about containers or OCI; :mod:`ketch.runtime.cgroups` builds
the per-container managers on top. See :mod:`.mounts` for detection and
:mod:`.files` for the file helpers.
"""

from __future__ import annotations

from ketch.sys.cgroupfs.files import (
    Writes,
    read_flat_keyed,
    read_int,
    read_lines,
    read_nested_keyed,
    read_text,
    write_text,
)
from ketch.sys.cgroupfs.mounts import (
    HYBRID,
    LEGACY,
    UNIFIED,
    Hierarchy,
    Host,
    detect_host,
    hugepage_sizes,
    own_cgroups,
    parse_mountinfo,
    parse_proc_cgroup,
)

__all__ = [
    "HYBRID",
    "LEGACY",
    "UNIFIED",
    "Hierarchy",
    "Host",
    "Writes",
    "detect_host",
    "hugepage_sizes",
    "own_cgroups",
    "parse_mountinfo",
    "parse_proc_cgroup",
    "read_flat_keyed",
    "read_int",
    "read_lines",
    "read_nested_keyed",
    "read_text",
    "write_text",
]
