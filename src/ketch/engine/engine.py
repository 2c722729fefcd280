"""The engine: one object owning the stores and services behind the Docker API.

Built once by the composition root (``ketch.cmd.ketchd``) from an
:class:`EngineConfig`; routers receive the services they need from it.

Layout of the data root (persistent) and exec root (per boot)::

    <data-root>/content/      blobs (ketch.content.local)
    <data-root>/derived/      built layers kept as their snapshot (ketch.engine.derived)
    <data-root>/snapshots/    snapshotter state (overlay, or native where overlay fails)
    <data-root>/images/       image names -> content (ketch.image.store)
    <data-root>/volumes/      local volume driver
    <data-root>/containers/<id>/   container records, logs
    <data-root>/build/        build cache (step keys -> images), build contexts in use
    <exec-root>/              supervisor sockets, runtime state, bundles
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from ketch.content.local import LocalContentStore
from ketch.engine.derived import DerivedContent
from ketch.engine.events import EventBus
from ketch.engine.images import ImageService
from ketch.engine.system import System
from ketch.engine.volumes import VolumeService
from ketch.image.store import ImageStore
from ketch.snapshot import Snapshotter

if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Iterable

    from ketch.engine.build import Builder
    from ketch.engine.containers.network import NetContext
    from ketch.engine.supervisor import ZygoteHandle

__all__ = ["Engine", "EngineConfig"]

log = logging.getLogger(__name__)


@dataclass
class EngineConfig:
    data_root: str = "/var/lib/ketch"
    exec_root: str = "/run/ketch"
    default_runtime: str = "ketch"
    # name -> runc-compatible binary path; "ketch" (in-process) is always present
    runtimes: dict[str, str] = field(default_factory=dict)
    live_restore: bool = False
    debug: bool = False
    log_driver: str = "json-file"
    log_opts: dict[str, str] = field(default_factory=dict)
    # the default bridge network's device and its address (dockerd's --bridge, --bip);
    # networking=False: containers get network modes none, host and container: only
    bridge: str = "ketch0"
    bip: str | None = None
    networking: bool = True


def _host_networks() -> Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """What the host's addresses and routes already use (default pools avoid them)."""
    from ketch.sys.netlink import Netlink

    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    try:
        with Netlink.open() as nl:
            out += [a.interface.network for a in nl.addrs()]
            out += [r.dst for r in nl.routes() if r.dst is not None and r.dst.prefixlen > 0]
    except OSError as e:
        log.warning("reading the host's routes: %s", e)
    return out


def _address_of(link: str) -> str | None:
    """The first IPv4 address (with prefix) of ``link``, if it exists."""
    from ketch.sys.netlink import Netlink

    try:
        with Netlink.open() as nl:
            for a in nl.addrs(link):
                if a.interface.version == 4:
                    return str(a.interface)
    except OSError:
        pass
    return None


def _snapshotter(root: str) -> Snapshotter:
    from ketch.snapshot.overlay import OverlaySnapshotter

    try:
        return OverlaySnapshotter(os.path.join(root, "overlay"))
    except OSError as e:  # no overlayfs here: copy-based snapshots still work
        from ketch.snapshot.native import NativeSnapshotter

        log.warning("overlay snapshotter unavailable (%s); using native copies", e)
        return NativeSnapshotter(os.path.join(root, "native"))


class Engine:
    """Stores and services of one daemon instance."""

    def __init__(self, config: EngineConfig, zygote: ZygoteHandle | None = None) -> None:
        """``zygote``: the supervisors' fork server (None: containers cannot start)."""
        self.config = config
        data, exe = config.data_root, config.exec_root
        for d in (data, exe):
            os.makedirs(d, mode=0o711, exist_ok=True)
        self.events = EventBus()
        self.snapshotter = _snapshotter(os.path.join(data, "snapshots"))
        self.content = DerivedContent(LocalContentStore(os.path.join(data, "content")),
                                      os.path.join(data, "derived"), self._layer_tar)
        self.image_store = ImageStore(os.path.join(data, "images"), self.content)
        from ketch.engine.containers import runtimes

        self.system = System(
            data_root=data, exec_root=exe, debug=config.debug,
            default_runtime=config.default_runtime,
            runtimes={n: runtimes.describe(n, config.runtimes, exe).get("path", "ketch")
                      for n in runtimes.known(config.runtimes)},
            live_restore=config.live_restore, log_driver=config.log_driver)
        # --- services (one line each; keep this block additive) ---
        self.images = ImageService(self.image_store, self.content, self.snapshotter, self.events)
        self.volumes = VolumeService(os.path.join(data, "volumes"), self.events)
        self.net = self._networking() if config.networking else None

        self._containers(zygote)
        self._builder_: Builder | None = None
        self._sweep_build_contexts()

    def _layer_tar(self, chain: str, out: IO[bytes]) -> None:
        """The layer tar of committed snapshot ``chain`` (what a derived blob is made of)."""
        from ketch.engine.diff import diff_tar

        diff_tar(self.snapshotter, chain, out)

    def _networking(self) -> NetContext:
        """Networks, IPAM, the firewall table and the port allocator (made real in
        :meth:`start`). The nft table is ``ketch``, or ``ketch-<bridge>`` for a daemon
        with another default bridge, so daemons side by side keep their own rules."""
        from ketch.engine.containers.network import NetContext
        from ketch.engine.networks import NetworkService
        from ketch.network.drivers import builtin_drivers
        from ketch.network.firewall import Firewall
        from ketch.network.ipam.local import LocalIpam
        from ketch.network.portmap import PortAllocator

        cfg = self.config
        net_dir = os.path.join(cfg.data_root, "network")
        # As dockerd with docker0: a default bridge that exists keeps its address
        # unless --bip says otherwise.
        bip = cfg.bip or _address_of(cfg.bridge)
        firewall = Firewall("ketch" if cfg.bridge == "ketch0" else f"ketch-{cfg.bridge}")
        self.networks = NetworkService(
            os.path.join(net_dir, "records"), self.events, builtin_drivers(firewall),
            LocalIpam(os.path.join(net_dir, "ipam.json"), taken=_host_networks),
            default_bridge=cfg.bridge, default_bip=bip)
        return NetContext(self.networks, PortAllocator(), firewall)

    def _containers(self, zygote: ZygoteHandle | None) -> None:
        from ketch.engine.containers.exec import ExecService
        from ketch.engine.containers.service import ContainerService
        from ketch.engine.containers.store import ContainerStore

        self.containers = ContainerService(
            config=self.config,
            store=ContainerStore(os.path.join(self.config.data_root, "containers")),
            image_store=self.image_store, content=self.content, snapshotter=self.snapshotter,
            events=self.events, volumes=getattr(self, "volumes", None), zygote=zygote,
            net=self.net)
        self.execs = ExecService(self.containers)
        self.images.in_use = self.containers.in_use
        self.images.running = self.containers.running_with
        self.system.counts = self._counts

    @property
    def builder(self) -> Builder:
        """``docker build``'s executor, made at the first build: an idle daemon does not
        hold the builder's modules."""
        if self._builder_ is None:
            self._builder_ = self._builder()
        return self._builder_

    def _sweep_build_contexts(self) -> None:
        """Remove the build contexts a dead daemon left (``<data-root>/build/tmp/*``)."""
        import shutil

        tmp = os.path.join(self.config.data_root, "build", "tmp")
        with contextlib.suppress(FileNotFoundError):
            for stale in os.listdir(tmp):
                shutil.rmtree(os.path.join(tmp, stale), ignore_errors=True)

    def _builder(self) -> Builder:
        """``docker build``: the executor over these stores and the container service."""
        from ketch.engine.build import Builder

        return Builder(images=self.images, containers=self.containers, content=self.content,
                       snapshotter=self.snapshotter, data_root=self.config.data_root)

    def _counts(self) -> dict[str, int]:
        states = [c.state.status for c in self.containers.store.all()]
        running = sum(s in ("running", "restarting") for s in states)
        paused = states.count("paused")
        return {"Containers": len(states), "ContainersRunning": running,
                "ContainersPaused": paused, "ContainersStopped": len(states) - running - paused,
                "Images": len({i.id for i in self.image_store.list()})}

    def disk_usage(self) -> dict[str, Any]:
        """``GET /system/df``."""
        from ketch.engine.containers.query import list_containers

        img = self.images.usage()
        return {"LayersSize": img["LayersSize"], "Images": img["Images"],
                "Containers": list_containers(self.containers, all=True, size=True),
                "Volumes": self.volumes.usage(), "BuildCache": []}

    async def start(self) -> None:
        """Networks up, then reconnect to running containers and apply restart policies
        (daemon start); finally drop firewall entries no container or network owns."""
        net = self.net
        if net is not None:
            import asyncio

            from ketch.engine.containers.network import attach_names
            from ketch.network.resolver import Resolver, host_upstreams

            if net.firewall is not None:
                await asyncio.to_thread(net.firewall.ensure)
            await asyncio.to_thread(self.networks.start)
            lookup, reverse = attach_names(self.containers)
            net.resolver = Resolver(lookup, host_upstreams(), reverse=reverse)
            net.loop = asyncio.get_running_loop()
        await self.containers.restore()
        if net is not None:
            await asyncio.to_thread(self._release_stray_addresses)
        if net is not None and net.firewall is not None:
            await asyncio.to_thread(self._flush_stale_rules)

    def _release_stray_addresses(self) -> None:
        claimed: dict[str, set[str]] = {}
        for c in self.containers.store.all():
            for ep in c.endpoints.values():
                if ep.get("IPAddress"):
                    claimed.setdefault(ep.get("NetworkID", ""), set()).add(ep["IPAddress"])
        stray = self.networks.release_unclaimed(claimed)
        if stray:
            log.info("released addresses no endpoint holds: %s", ", ".join(stray))

    def _flush_stale_rules(self) -> None:
        from ketch.engine.containers.network import mapping_of

        assert self.net is not None and self.net.firewall is not None
        bridges = [r.bridge for r in self.networks.records()]
        ports = [mapping_of(d) for c in self.containers.store.all() for d in c.ports]
        stale = self.net.firewall.flush_stale([b for b in bridges if b], ports)
        if stale.networks or stale.ports:
            log.info("removed firewall rules nothing owns: %s", stale)

    async def shutdown(self) -> None:
        """Daemon stop: containers stop unless live-restore keeps them running."""
        await self.containers.shutdown()
        if self.net is not None and self.net.resolver is not None:
            self.net.resolver.close()

    def close(self) -> None:
        """Stop background work; running containers are left to their supervisors."""
