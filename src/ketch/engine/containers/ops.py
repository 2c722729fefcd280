"""Operations on a container that change it in place: pause, unpause, rename, update."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ketch.engine.containers import createbody
from ketch.engine.containers.model import parse_rfc3339
from ketch.engine.specconv import oci_resources
from ketch.errors import Conflict, InvalidArgument

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["pause", "prune", "rename", "unpause", "update"]


async def pause(svc: ContainerService, ref: str) -> None:
    c = svc.get(ref)
    svc._running(c)
    if c.state.status == "paused":
        raise Conflict(f"container {c.id} is already paused")
    await asyncio.to_thread(svc.runtime(c.runtime).pause, c.id)
    c.state.status = "paused"
    svc.save(c)
    svc._event(c, "pause")


async def unpause(svc: ContainerService, ref: str) -> None:
    c = svc.get(ref)
    if c.state.status != "paused":
        raise Conflict(f"container {c.id} is not paused")
    await asyncio.to_thread(svc.runtime(c.runtime).resume, c.id)
    c.state.status = "running"
    svc.save(c)
    svc._event(c, "unpause")


async def rename(svc: ContainerService, ref: str, new_name: str) -> None:
    c = svc.get(ref)
    old = c.name
    svc.store.rename(c, new_name)
    svc.save(c)
    svc._event(c, "rename", oldName=old)


async def update(svc: ContainerService, ref: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument("update body must be a JSON object")
    unknown = set(body) - createbody.HOST_CONFIG_FIELDS
    if unknown:
        raise InvalidArgument(f"unknown field {sorted(unknown)[0]!r} in update config")
    c = svc.get(ref)
    hc = dict(c.host_config)
    for k, v in body.items():
        if k == "RestartPolicy":
            continue
        if v not in (None, 0, "", [], {}):
            hc[k] = v
    if body.get("RestartPolicy"):
        if hc.get("AutoRemove"):
            raise InvalidArgument("Restart policy cannot be updated because AutoRemove is "
                                  "enabled for the container")
        hc["RestartPolicy"] = createbody.restart_policy({"RestartPolicy":
                                                         body["RestartPolicy"]})
    resources = oci_resources(hc)
    await svc.drop_prespawn(c)  # a speculatively created container has the old limits
    if c.state.status in ("running", "paused"):
        await asyncio.to_thread(svc.runtime(c.runtime).update, c.id, resources)
    c.host_config = hc
    svc.save(c)
    svc._event(c, "update")
    return {"Warnings": []}


async def prune(svc: ContainerService, filters: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """``docker container prune``: remove stopped containers matching ``until``, ``label``
    and ``label!``; what was removed and the writable-layer space it freed."""
    from ketch.engine.containers.query import label_match, sizes
    from ketch.engine.events import parse_time

    bad = set(filters) - {"until", "label", "label!"}
    if bad:
        raise InvalidArgument(f"invalid filter '{sorted(bad)[0]}'")
    until = parse_time(filters["until"][0]) if filters.get("until") else None
    deleted: list[str] = []
    reclaimed = 0
    for c in list(svc.store.all()):
        if c.state.status not in ("exited", "created", "dead"):
            continue
        labels = c.config.get("Labels") or {}
        if not all(label_match(labels, v) for v in filters.get("label", [])):
            continue
        if any(label_match(labels, v) for v in filters.get("label!", [])):
            continue
        if until is not None and parse_rfc3339(c.created) * 1e9 > until:
            continue
        try:
            size = (await asyncio.to_thread(sizes, svc, c))[0]
            await svc.remove(c.id)
        except Exception:
            continue
        deleted.append(c.id)
        reclaimed += size
    return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}
