"""The engine's event bus: what ``docker events`` shows.

Every service publishes through one :class:`EventBus`; the API streams from it.
Contract of ``publish``: ``type`` is Docker's event type (``container``,
``image``, ``volume``, ``network``, ``daemon``), ``action`` Docker's action
(``create``, ``start``, ``die``, ``tag``, ``destroy`` ...; health results are
``health_status: healthy``), ``actor_id`` the object's ID (or name for volumes
and images where Docker uses the name), ``attributes`` string labels Docker shows
(``name``, ``image``, ``exitCode`` ...). Publishing never blocks and never fails
the caller.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventBus"]


@dataclass(frozen=True)
class Event:
    type: str
    action: str
    actor_id: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    time_nano: int = 0
    scope: str = "local"

    def to_json(self) -> dict[str, Any]:
        """Docker's ``EventMessage`` (with the legacy ``status``/``id``/``from`` members)."""
        out: dict[str, Any] = {
            "Type": self.type, "Action": self.action,
            "Actor": {"ID": self.actor_id, "Attributes": dict(self.attributes)},
            "scope": self.scope, "time": self.time_nano // 1_000_000_000,
            "timeNano": self.time_nano,
        }
        if self.type == "container":
            out["status"] = self.action
            out["id"] = self.actor_id
            if "image" in self.attributes:
                out["from"] = self.attributes["image"]
        return out


class EventBus:
    """Publish/subscribe with a bounded history for ``since``."""

    def __init__(self, history: int = 1024) -> None:
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: list[Callable[[Event], None]] = []
        self._mu = threading.Lock()

    def publish(self, type: str, action: str, actor_id: str,
                attributes: Mapping[str, str] | None = None) -> Event:
        ev = Event(type, action, actor_id, dict(attributes or {}), time.time_ns())
        with self._mu:
            self._history.append(ev)
            subs = list(self._subscribers)
        for fn in subs:
            try:
                fn(ev)
            except Exception:  # a broken subscriber must not fail the publisher
                pass
        return ev

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``fn`` for each new event (from the publisher's thread); returns unsubscribe."""
        with self._mu:
            self._subscribers.append(fn)

        def cancel() -> None:
            with self._mu:
                if fn in self._subscribers:
                    self._subscribers.remove(fn)
        return cancel

    def history(self) -> list[Event]:
        with self._mu:
            return list(self._history)
