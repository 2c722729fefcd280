"""Small pieces of container lifecycle policy: signals, restart backoff, wait conditions."""

from __future__ import annotations

import signal as _signal
from collections.abc import Mapping
from typing import Any

from ketch.errors import InvalidArgument

__all__ = ["RestartBackoff", "parse_signal", "should_restart"]


def parse_signal(value: str | int | None, default: int = _signal.SIGTERM) -> int:
    """``SIGKILL``, ``KILL``, ``kill`` or ``9`` → 9; empty → ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, int):
        sig = value
    elif value.isdigit():
        sig = int(value)
    else:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            sig = int(_signal.Signals[name])
        except KeyError:
            raise InvalidArgument(f"Invalid signal: {value}") from None
    if not 0 < sig < 65:
        raise InvalidArgument(f"Invalid signal: {value}")
    return sig


def should_restart(policy: Mapping[str, Any], exit_code: int, restart_count: int,
                   manually_stopped: bool) -> bool:
    """Docker's restart decision after an exit the daemon did not ask for."""
    name = policy.get("Name") or "no"
    if manually_stopped or name == "no":
        return False
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure":
        limit = policy.get("MaximumRetryCount") or 0
        return exit_code != 0 and (limit == 0 or restart_count < limit)
    return False


class RestartBackoff:
    """Delay before the next restart: 100 ms doubling to 1 min, reset after 10 s of uptime."""

    START, MAX, RESET_AFTER = 0.1, 60.0, 10.0

    def __init__(self) -> None:
        self.delay = 0.0

    def next(self, ran_for: float) -> float:
        if ran_for >= self.RESET_AFTER or self.delay == 0.0:
            self.delay = self.START
        else:
            self.delay = min(self.delay * 2, self.MAX)
        return self.delay
