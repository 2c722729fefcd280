"""``POST /containers/create``: check the body, merge the image config, reserve the
name, prepare the writable layer and the volumes; undo all of it if any step fails.

Nothing runs yet: a container's supervisor exists only from ``start`` on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from typing import TYPE_CHECKING, Any

from ketch.engine.containers import createbody, setup
from ketch.engine.containers.model import Container, now_rfc3339
from ketch.engine.containers.names import random_name
from ketch.engine.containers.store import validate_name
from ketch.engine.specconv import Converted
from ketch.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

__all__ = ["create"]

_ETC_FILES = ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")


async def create(svc: ContainerService, name: str | None, body: Any) -> dict[str, Any]:
    body = createbody.check_body(body)
    hc = dict(body.get("HostConfig") or {})
    image_ref = body["Image"]
    image = await asyncio.to_thread(svc.image_store.get, image_ref)
    full_cfg = await asyncio.to_thread(svc.image_store.config, image)
    image_cfg: dict[str, Any] = dict(full_cfg.get("config") or {})
    from ketch.engine.containers import network

    networking = dict(body.get("NetworkingConfig") or {})
    warnings = network.plan(svc.net, hc, networking)
    mode = hc["NetworkMode"]
    hc["RestartPolicy"] = createbody.restart_policy(hc)
    runtime = hc.get("Runtime") or svc.config.default_runtime
    svc.runtime_desc(runtime)  # unknown runtime: 400 now, not at start
    hc["Runtime"] = runtime
    log_cfg = dict(hc.get("LogConfig") or {})
    if not log_cfg.get("Type"):  # the daemon's driver; the client's options win
        log_cfg = {"Type": svc.config.log_driver,
                   "Config": {**svc.config.log_opts, **(log_cfg.get("Config") or {})}}
    if log_cfg["Type"] not in ("json-file", "none", "local"):
        raise InvalidArgument(f"logger: no log driver named '{log_cfg['Type']}' is "
                              "registered")
    hc["LogConfig"] = {"Type": log_cfg["Type"], "Config": dict(log_cfg.get("Config") or {})}
    cfg = createbody.merge_image_config(body, image_cfg)
    argv = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    if not argv:
        raise InvalidArgument("no command specified")
    cid = secrets.token_hex(32)
    cname = validate_name(name) if name else random_name(svc.store.name_taken)
    c = Container(id=cid, name=cname, created=now_rfc3339(), image_id=image.id,
                  image_name=image_ref, config=cfg, host_config=hc, path=argv[0],
                  args=argv[1:], runtime=runtime,
                  networking_config=networking)
    if c.config.get("Hostname") == "" and mode != "host":
        c.config["Hostname"] = cid[:12]
    # Every HostConfig check specconv knows, before anything exists.
    conv = setup.convert(svc, c, "/nonexistent", image_cfg, dry=True)
    svc.store.reserve(c)
    d = svc.store.dir(cid)
    try:
        os.makedirs(d, 0o710)
        c.log_path = os.path.join(d, f"{cid}-json.log") \
            if hc["LogConfig"]["Type"] != "none" else ""
        c.snapshot_key = f"container-{cid}"
        from ketch.image.unpack import prepare_rootfs

        await asyncio.to_thread(prepare_rootfs, image, c.snapshot_key, svc.content,
                                svc.snapshotter, {"ketch.container": cid})
        await asyncio.to_thread(_create_volumes, svc, c, conv)
        svc.save(c)
    except BaseException:
        await asyncio.to_thread(_discard, svc, c)
        raise
    svc._event(c, "create")
    svc.prespawn(c)
    return {"Id": cid, "Warnings": warnings}


def _create_volumes(svc: ContainerService, c: Container, conv: Converted) -> None:
    mounts = c.mounts  # filled as volumes are held, so a failure can release them
    for m in conv.spec.get("mounts") or []:
        if m.get("type") == "bind" and m["destination"] not in _ETC_FILES:
            opts = m.get("options") or []
            mounts.append({"Type": "bind", "Source": m["source"],
                           "Destination": m["destination"], "Mode": "",
                           "RW": "ro" not in opts, "Propagation": next(
                               (o for o in opts if o.endswith(("private", "shared", "slave"))),
                               "rprivate")})
    for v in conv.volumes:
        if svc.volumes is None:
            raise FailedPrecondition("volumes are not available in this daemon")
        vol = svc.volumes.create(v.get("name"), "local", {}, {})
        name = vol["Name"]
        if v.get("name") is None:
            c.anonymous_volumes.append(name)
        # Held from create to rm, as Docker does: a stopped container's volumes are in use.
        path = svc.volumes.acquire(name, c.id, attributes={"destination":
                                                            v["destination"]})
        mounts.append({"Type": "volume", "Name": name, "Source": path,
                       "Destination": v["destination"], "Driver": "local", "Mode": "z",
                       "RW": not v.get("read_only"), "Propagation": ""})


def _discard(svc: ContainerService, c: Container) -> None:
    """Undo a create that failed half-way (no record was saved)."""
    with contextlib.suppress(NotFound, Conflict):
        if c.snapshot_key:
            svc.snapshotter.remove(c.snapshot_key)
    svc._release_volumes(c, True)
    svc.store.drop(c)
