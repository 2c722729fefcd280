"""ketch.client: how ketch tools drive an engine.

:class:`EngineClient` is the interface (``ketch.client.engine``);
:class:`RemoteEngineClient` speaks it over the Docker Engine API
(``ketch.client.remote``); stream decoders are in ``ketch.client.streams``.
"""

from __future__ import annotations

from ketch.client.engine import (
    STDERR,
    STDIN,
    STDOUT,
    SYSTEMERR,
    ConnectionFailed,
    ContainerAPI,
    EngineClient,
    ImageAPI,
    RawStream,
    Stream,
    SystemAPI,
    VolumeAPI,
    Waiter,
)
from ketch.client.remote import DEFAULT_HOST, RemoteEngineClient

__all__ = [
    "DEFAULT_HOST",
    "STDERR",
    "STDIN",
    "STDOUT",
    "SYSTEMERR",
    "ConnectionFailed",
    "ContainerAPI",
    "EngineClient",
    "ImageAPI",
    "RawStream",
    "RemoteEngineClient",
    "Stream",
    "SystemAPI",
    "VolumeAPI",
    "Waiter",
]
