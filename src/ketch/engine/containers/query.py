"""``docker ps`` and ``docker inspect``: listing with filters, and the inspect document."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ketch.engine.containers.model import Container, parse_rfc3339
from ketch.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["LIST_FILTERS", "inspect", "label_match", "list_containers", "sizes"]

LIST_FILTERS = frozenset({"ancestor", "before", "expose", "exited", "health", "id",
                          "isolation", "is-task", "label", "name", "network", "publish",
                          "since", "status", "volume"})
_STATUSES = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def sizes(svc: ContainerService, c: Container) -> tuple[int, int]:
    """(SizeRw, SizeRootFs): the writable layer, and it plus the image."""
    try:
        rw = svc.snapshotter.usage(c.snapshot_key).size
    except Exception:
        rw = 0
    try:
        img = sum(d.size for d in svc.image_store.layers(c.image_id))
    except Exception:
        img = 0
    return rw, rw + img


def label_match(labels: Mapping[str, str], want: str) -> bool:
    key, eq, value = want.partition("=")
    if key not in labels:
        return False
    return not eq or labels[key] == value


def _matcher(svc: ContainerService, filters: Mapping[str, Sequence[str]]
             ) -> Callable[[Container], bool]:
    bad = set(filters) - LIST_FILTERS
    if bad:
        raise InvalidArgument(f"invalid filter '{sorted(bad)[0]}'")
    for s in filters.get("status", []):
        if s not in _STATUSES:
            raise InvalidArgument(f"invalid filter 'status={s}'")
    before = [svc.get(r) for r in filters.get("before", [])]
    since = [svc.get(r) for r in filters.get("since", [])]
    ancestors: set[str] = set()
    for a in filters.get("ancestor", []):
        try:
            ancestors.add(svc.image_store.get(a).id)
        except NotFound:
            ancestors.add(a)

    def ok(c: Container) -> bool:
        f = filters
        if "id" in f and not any(c.id.startswith(v) for v in f["id"]):
            return False
        if "name" in f and not any(v.lstrip("/") in c.name.lstrip("/") for v in f["name"]):
            return False
        if "status" in f and c.state.status not in f["status"]:
            return False
        if "label" in f and not all(label_match(c.config.get("Labels") or {}, v)
                                    for v in f["label"]):
            return False
        if "exited" in f and not (c.state.status == "exited" and
                                  str(c.state.exit_code) in f["exited"]):
            return False
        if "ancestor" in f and not (c.image_id in ancestors or c.image_name in f["ancestor"]):
            return False
        if "volume" in f and not any(m.get("Name") in f["volume"] or
                                     m.get("Destination") in f["volume"] for m in c.mounts):
            return False
        if "health" in f:
            hs = (c.state.health or {}).get("Status", "none")
            if hs not in f["health"]:
                return False
        if "network" in f and (c.host_config.get("NetworkMode") or "none") not in f["network"]:
            return False
        if "is-task" in f and "true" in f["is-task"]:
            return False
        if "publish" in f or "expose" in f:
            ports = set((c.config.get("ExposedPorts") or {}).keys())
            if not any(p in ports or f"{p}/tcp" in ports for p in f.get("expose", [])):
                return False
        created = parse_rfc3339(c.created)
        if any(created >= parse_rfc3339(b.created) for b in before):
            return False
        return not any(created <= parse_rfc3339(s.created) for s in since)
    return ok


def list_containers(svc: ContainerService, *, all: bool = False, limit: int = -1,
                    size: bool = False, filters: Mapping[str, Sequence[str]] | None = None
                    ) -> list[dict[str, Any]]:
    filters = filters or {}
    match = _matcher(svc, filters)
    cs = sorted(svc.store.all(), key=lambda c: c.created, reverse=True)
    if not all and limit <= 0 and "status" not in filters and "exited" not in filters:
        cs = [c for c in cs if c.state.status in ("running", "paused", "restarting")]
    cs = [c for c in cs if match(c)]
    if limit > 0:
        cs = cs[:limit]
    return [c.summary(sizes(svc, c) if size else None) for c in cs]


def inspect(svc: ContainerService, ref: str, size: bool = False) -> dict[str, Any]:
    c = svc.get(ref)
    out = c.inspect(size=sizes(svc, c) if size else None)
    data: dict[str, str] = {}
    try:
        mounts = svc.snapshotter.mounts(c.snapshot_key)
        for opt in mounts[0].options if mounts else []:
            k, _, v = opt.partition("=")
            if k in ("lowerdir", "upperdir", "workdir"):
                data[{"lowerdir": "LowerDir", "upperdir": "UpperDir",
                      "workdir": "WorkDir"}[k]] = v
        data["MergedDir"] = svc.rootfs_dir(c)
    except Exception:
        pass
    out["GraphDriver"] = {"Name": "overlayfs", "Data": data or None}
    return out
