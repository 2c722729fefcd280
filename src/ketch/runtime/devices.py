"""Device access rules the cgroup enforces, beyond what the config lists.

The spec's ``linux.resources.devices`` usually starts with "deny everything".
Like runc, the runtime then allows what every container needs: the default
device nodes it creates, mknod of any node (creating is harmless; opening is
what the rules guard), the pty multiplexer and the container's ptys, and each
device the config asks it to create.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ketch.oci.runtime_spec import DEFAULT_DEVICES

__all__ = ["effective_resources"]

_ALWAYS: tuple[dict[str, Any], ...] = (
    {"allow": True, "type": "c", "major": None, "minor": None, "access": "m"},
    {"allow": True, "type": "b", "major": None, "minor": None, "access": "m"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},  # /dev/ptmx
    {"allow": True, "type": "c", "major": 136, "minor": None, "access": "rwm"},  # /dev/pts/*
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},  # /dev/console
)


def _rule(dev: Mapping[str, Any]) -> dict[str, Any]:
    kind = "c" if dev["type"] == "u" else dev["type"]
    return {"allow": True, "type": kind, "major": dev.get("major"), "minor": dev.get("minor"),
            "access": "rwm"}


def effective_resources(config: Mapping[str, Any]) -> dict[str, Any]:
    """``linux.resources`` with the always-allowed device rules appended."""
    linux = config.get("linux") or {}
    res = dict(linux.get("resources") or {})
    rules = list(res.get("devices") or [])
    rules.extend(_ALWAYS)
    rules.extend(_rule(d) for d in DEFAULT_DEVICES)
    rules.extend(_rule(d) for d in linux.get("devices") or [] if d.get("type") != "p")
    res["devices"] = rules
    return res
