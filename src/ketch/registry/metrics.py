"""Prometheus counters of the registry, rendered in the text exposition format.

``ketch_registry_http_requests_total``, ``…_received_bytes_total`` and
``…_sent_bytes_total``, each labelled by method and status code, plus blobs and
manifests pushed. Counting happens on the event loop thread only, so plain dicts do.
"""

from __future__ import annotations

from collections import defaultdict

__all__ = ["Metrics"]

_PREFIX = "ketch_registry"


class Metrics:
    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.received: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.sent: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.events: defaultdict[str, int] = defaultdict(int)

    def observe(self, method: str, status: int, received: int, sent: int) -> None:
        key = (method, status)
        self.requests[key] += 1
        self.received[key] += received
        self.sent[key] += sent

    def count(self, event: str) -> None:
        """Count a domain event (``blob_pushed``, ``manifest_pushed``, ...)."""
        self.events[event] += 1

    def render(self) -> bytes:
        lines: list[str] = []
        for metric, help_text, values in (
                ("http_requests_total", "HTTP requests answered", self.requests),
                ("http_received_bytes_total", "request body bytes received", self.received),
                ("http_sent_bytes_total", "response body bytes sent", self.sent)):
            name = f"{_PREFIX}_{metric}"
            lines += [f"# HELP {name} {help_text}.", f"# TYPE {name} counter"]
            for (method, code), v in sorted(values.items()):
                lines.append(f'{name}{{method="{method}",code="{code}"}} {v}')
        name = f"{_PREFIX}_events_total"
        lines += [f"# HELP {name} Registry events (pushes, deletes, mounts).",
                  f"# TYPE {name} counter"]
        for event, v in sorted(self.events.items()):
            lines.append(f'{name}{{event="{event}"}} {v}')
        return ("\n".join(lines) + "\n").encode()
