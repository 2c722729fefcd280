"""Preparing a container's filesystem and OCI bundle for start, and undoing it.

``prepare_start`` mounts the container's snapshot at ``<bundle>/rootfs``, binds its
volumes (copying image content into empty ones), writes the hostname/hosts/
resolv.conf files it bind-mounts and the bundle's ``config.json``; the network's
part (a namespace, addresses, hosts and resolv.conf) is made meanwhile on another
thread. ``unmount``
undoes the rootfs mount after the container exited (volumes stay held until the
container is removed, as in Docker).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ketch.engine.containers import network, runtimes
from ketch.engine.containers.model import Container
from ketch.engine.specconv import Converted, sort_mounts, to_oci_spec
from ketch.errors import FailedPrecondition, NotFound
from ketch.runtime.state import atomic_write

if TYPE_CHECKING:
    from ketch.engine.containers.service import ContainerService

log = logging.getLogger(__name__)

__all__ = ["convert", "ensure_mounted", "prepare_start", "unmount"]

_INIT_CANDIDATES = ("docker-init", "tini-static", "tini")


def convert(svc: ContainerService, c: Container, rootfs: str, image_cfg: Mapping[str, Any], *,
             dry: bool = False) -> Converted:
    body = dict(c.config)
    body["HostConfig"] = c.host_config
    if dry:
        body["User"] = ""  # names are looked up in the rootfs at start
    d = svc.store.dir(c.id)
    hc = c.host_config
    uts_host = hc.get("UTSMode") == "host" or hc.get("NetworkMode") == "host"
    cfg = {k: v for k, v in image_cfg.items()}
    if dry:
        cfg.pop("User", None)
    from ketch.sys.cgroupfs import UNIFIED, detect_host

    return to_oci_spec(
        body, cfg, container_id=c.id, rootfs=rootfs,
        hostname=None if uts_host else (c.config.get("Hostname") or c.id[:12]),
        cgroup_parent=hc.get("CgroupParent") or "/ketch",
        cgroup_v2=detect_host().mode == UNIFIED,
        resolv_conf=os.path.join(d, "resolv.conf"), hosts=os.path.join(d, "hosts"),
        hostname_file=None if uts_host else os.path.join(d, "hostname"))


def prepare_start(svc: ContainerService, c: Container
                  ) -> tuple[str, dict[str, Any], concurrent.futures.Future[None]]:
    """Mount the rootfs and volumes, write the bundle; returns (bundle, OCI spec, the
    network's joins under way).

    The network's part runs on another thread meanwhile: :func:`network.prepare`
    (addresses, /etc files, and a new network namespace, which takes the kernel
    milliseconds to make), whose namespace path the spec needs, then
    :func:`network.join_all` (veths, published ports), which the returned future
    tracks so the caller can let it overlap the supervisor's create. Both touch the
    container's network fields alone."""
    from ketch.snapshot import mount_all

    bundle = svc.bundle_dir(c)
    rootfs = svc.rootfs_dir(c)
    etc_paths(svc, c)  # before the network's thread saves the record
    prepared: concurrent.futures.Future[str | None] = concurrent.futures.Future()

    def network_part() -> None:
        try:
            path = network.prepare(svc, c)
        except BaseException as e:
            prepared.set_exception(e)
            raise
        prepared.set_result(path)
        if c.sandbox:
            network.join_all(svc, c)

    net = _prep_pool().submit(network_part)
    try:
        os.makedirs(rootfs, 0o711, exist_ok=True)
        if not os.path.ismount(rootfs):
            mount_all(svc.snapshotter.mounts(c.snapshot_key), rootfs)
        image_cfg = dict(svc.image_store.config(c.image_id).get("config") or {}) \
            if image_exists(svc, c.image_id) else {}
        write_etc(svc, c, network_files=not network.sandboxed(c))
        conv = convert(svc, c, rootfs, image_cfg)
        netns_path = prepared.result()  # records the sandbox and its addresses
        spec = conv.spec
        if netns_path is not None:
            for ns in spec["linux"]["namespaces"]:
                if ns["type"] == "network":
                    ns["path"] = netns_path
        extra = volume_binds(svc, c, rootfs)
        if conv.init:
            init = next((p for p in map(shutil.which, _INIT_CANDIDATES) if p), None)
            if init is None:
                raise FailedPrecondition("--init: no init binary on this host (install "
                                         "Debian's tini package)")
            extra.append({"destination": "/sbin/docker-init", "type": "bind",
                          "source": os.path.realpath(init),
                          "options": ["rbind", "ro", "nosuid", "nodev"]})
            spec["process"]["args"] = ["/sbin/docker-init", "--", *spec["process"]["args"]]
        spec["mounts"] = sort_mounts([*spec.get("mounts", []), *extra])
        runtimes.adapt_spec(c.runtime, spec)
        atomic_write(os.path.join(bundle, "config.json"), json.dumps(spec).encode(), 0o600,
                     sync=False)
    except BaseException:
        concurrent.futures.wait([net])  # landed (or failed and undone itself) first
        unmount(svc, c)
        raise
    return bundle, spec, net


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _prep_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="ketch-prep")
        return _POOL


def image_exists(svc: ContainerService, image_id: str) -> bool:
    try:
        svc.image_store.get(image_id)
    except NotFound:
        return False
    return True


def volume_binds(svc: ContainerService, c: Container, rootfs: str) -> list[dict[str, Any]]:
    out = []
    for m in c.mounts:
        if m["Type"] != "volume" or svc.volumes is None:
            continue
        path = svc.volumes.acquire(m["Name"], c.id)
        src_dir = os.path.join(rootfs, m["Destination"].lstrip("/"))
        with contextlib.suppress(OSError):
            svc.volumes.copy_up(m["Name"], src_dir)
        opts = ["rbind", "rprivate"] + ([] if m.get("RW", True) else ["ro"])
        out.append({"destination": m["Destination"], "type": "bind", "source": path,
                    "options": opts})
    return out


def etc_paths(svc: ContainerService, c: Container) -> None:
    """Where the container's hostname, hosts and resolv.conf files live."""
    d = svc.store.dir(c.id)
    c.hostname_path = os.path.join(d, "hostname")
    c.hosts_path = os.path.join(d, "hosts")
    c.resolv_conf_path = os.path.join(d, "resolv.conf")


def write_etc(svc: ContainerService, c: Container, *, network_files: bool = True) -> None:
    """Write the hostname file and, with ``network_files`` (the modes without a sandbox
    of their own, whose network part does not write them), hosts and resolv.conf."""
    etc_paths(svc, c)
    host_net = c.host_config.get("NetworkMode") == "host"
    hostname = os.uname().nodename if host_net else (c.config.get("Hostname") or c.id[:12])
    atomic_write(c.hostname_path, hostname.encode() + b"\n", 0o644, sync=False)
    if not network_files:
        return
    try:
        with open("/etc/resolv.conf", "rb") as f:
            resolv = f.read()
    except OSError:
        resolv = b""
    if host_net:
        try:
            with open("/etc/hosts", "rb") as f:
                hosts = f.read()
        except OSError:
            hosts = b"127.0.0.1\tlocalhost\n"
    else:
        hosts = (b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                 b"fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n"
                 b"ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
    atomic_write(c.hosts_path, hosts, 0o644, sync=False)
    atomic_write(c.resolv_conf_path, resolv, 0o644, sync=False)


def unmount(svc: ContainerService, c: Container) -> None:
    """After the container stopped (or failed to start): release its network (sandbox,
    addresses, ports) and unmount its rootfs (every layer stacked there)."""
    from ketch.snapshot import unmount as umount

    try:
        network.release(svc, c)
    except Exception as e:  # the rootfs still gets unmounted
        log.warning("container %s: releasing its network: %s", c.short_id, e)

    rootfs = svc.rootfs_dir(c)
    while os.path.ismount(rootfs):
        try:
            umount(rootfs)
        except OSError:
            umount(rootfs, detach=True)


def ensure_mounted(svc: ContainerService, c: Container) -> bool:
    """Mount the container's rootfs if it is not (docker cp on a stopped container).

    Returns True when this call mounted it (the caller unmounts when done).
    """
    from ketch.snapshot import mount_all

    rootfs = svc.rootfs_dir(c)
    if os.path.ismount(rootfs):
        return False
    os.makedirs(rootfs, 0o711, exist_ok=True)
    mount_all(svc.snapshotter.mounts(c.snapshot_key), rootfs)
    return True
