"""Pull, push and login: the image service's side that talks to registries.

The work is in :mod:`ketch.engine.pull` and :mod:`ketch.engine.push`; this mixin of
:class:`ketch.engine.images.ImageService` turns API arguments into references and
credentials, writes the image's name once a pull is complete (under the service's
lock, after checking every blob is there), and publishes ``pull``/``push`` events.
One :class:`~ketch.distribution.transport.Transport` is shared, so connections and
the scheme chosen for loopback registries are reused from pull to pull.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ketch.content import ContentStore
from ketch.engine import layerstage
from ketch.engine.events import EventBus
from ketch.engine.image_core import ImageCore, familiar
from ketch.errors import KetchError, NotFound
from ketch.image import blobs, reference
from ketch.image.store import ImageStore, host_platform
from ketch.oci.descriptor import Platform
from ketch.snapshot import Snapshotter

if TYPE_CHECKING:  # the registry client is imported at the first pull, push or login:
    # a daemon that never talks to a registry does not hold it in memory
    from ketch.distribution.auth import Credentials
    from ketch.distribution.transport import Transport
    from ketch.engine.pull import Emit

__all__ = ["ImageDistribution", "platform_of"]

log = logging.getLogger(__name__)


class ImageDistribution(ImageCore):
    """``docker pull``/``push``/``login`` over the image store (see the module doc)."""

    def __init__(self, store: ImageStore, content: ContentStore, snapshotter: Snapshotter,
                 events: EventBus) -> None:
        super().__init__(store, content, snapshotter, events)
        self._transport_: Transport | None = None
        try:  # stage snapshots of a pull a dead daemon left behind
            gone = layerstage.sweep(snapshotter)
        except (KetchError, OSError) as e:
            log.warning("cleaning up after interrupted pulls: %s", e)
            gone = []
        if gone:
            log.info("removed %d snapshots of interrupted pulls", len(gone))

    @property
    def _transport(self) -> Transport:
        """The shared connection pool, made at first use."""
        if self._transport_ is None:
            from ketch.distribution.transport import Transport

            with self._mu:
                if self._transport_ is None:
                    self._transport_ = Transport()
        return self._transport_

    def pull(self, image: str, tag: str | None = None, platform: str | None = None,
             auth: Credentials | None = None, emit: Emit | None = None
             ) -> builtins.list[dict[str, Any]]:
        """``POST /images/create?fromImage=``: pull from the registry (:mod:`ketch.engine.pull`).

        Progress goes to ``emit`` as Docker's JSON messages (also returned when ``emit``
        is None). The name is written last, so a failed or interrupted pull leaves no
        image. Errors before the first message are raised (an HTTP error, as dockerd).
        """
        try:
            return self._pull(image, tag, platform, auth, emit)
        finally:
            self._transport.release_thread()

    def _pull(self, image: str, tag: str | None, platform: str | None,
              auth: Credentials | None, emit: Emit | None) -> builtins.list[dict[str, Any]]:
        from ketch.distribution.client import Registry
        from ketch.engine.pull import Puller

        ref = reference.normalize(image)
        if tag:
            ref = reference.normalize(f"{ref.name}@{tag}" if ":" in tag else f"{ref.name}:{tag}")
        out: builtins.list[dict[str, Any]] = []
        say: Emit = emit or out.append
        plat = platform_of(platform)
        registry = Registry(ref.domain, auth, self._transport)
        result = Puller(self.content, self.snapshotter, registry, say).pull(ref, plat)
        name = str(ref)
        with self._mu:
            before = None
            with contextlib.suppress(NotFound):
                before = self.store.get(name).target.digest
            blobs.closure(self.content, result.target, strict=True)  # all there, still
            rec, _ = self._set_name(name, result.target)
        self._publish("pull", rec.id, familiar(name))
        say({"status": f"Digest: {result.digest}"})
        if before == result.target.digest:
            say({"status": f"Status: Image is up to date for {ref.familiar()}"})
        else:
            say({"status": f"Status: Downloaded newer image for {ref.familiar()}"})
        return out

    def push(self, name: str, tag: str | None = None, auth: Credentials | None = None,
             emit: Emit | None = None) -> builtins.list[dict[str, Any]]:
        """``POST /images/{name}/push?tag=``: push one tag, or every tag of the repository
        when ``tag`` is empty (:mod:`ketch.engine.push`)."""
        try:
            return self._push(name, tag, auth, emit)
        finally:
            self._transport.release_thread()

    def _push(self, name: str, tag: str | None, auth: Credentials | None,
              emit: Emit | None) -> builtins.list[dict[str, Any]]:
        from ketch.distribution.client import Registry
        from ketch.engine.push import Pusher

        ref = reference.normalize(name)
        repo = reference.Reference(ref.domain, ref.path)
        if tag:
            records = [self.store.get(str(reference.Reference(ref.domain, ref.path, tag)))]
        elif ":" in name.rsplit("/", 1)[-1] or ref.digest is not None:
            records = [self.store.get(str(ref))]
        else:
            records = [r for r in self.store.list()
                       if r.reference.name == repo.name and r.reference.tag is not None]
            if not records:
                raise NotFound(f"An image does not exist locally with the tag: "
                               f"{repo.familiar()}")
        out: builtins.list[dict[str, Any]] = []
        say: Emit = emit or out.append
        registry = Registry(ref.domain, auth, self._transport)
        shown = repo.name if ref.domain == reference.DEFAULT_DOMAIN else repo.familiar()
        say({"status": f"The push refers to repository [{shown}]"})
        pusher = Pusher(self.content, registry, say)
        for rec in records:
            r = rec.reference
            pusher.push(rec, ref.domain, ref.path, r.tag or reference.DEFAULT_TAG)
            self._publish("push", rec.id, familiar(rec.name))
        return out

    def login(self, username: str, password: str, server: str = "",
              identity_token: str = "") -> dict[str, str]:
        """``POST /auth``: check credentials against the registry (dockerd's answer)."""
        from ketch.distribution.auth import Credentials
        from ketch.distribution.client import Registry
        from ketch.distribution.endpoint import DOCKER_HUB

        creds = Credentials(username, password, identity_token)
        try:
            Registry(server or DOCKER_HUB, creds, self._transport).login()
        finally:
            self._transport.release_thread()
        return {"Status": "Login Succeeded", "IdentityToken": ""}


def platform_of(text: str | None) -> Platform:
    """The platform a pull wants: ``os[/arch[/variant]]``, default this host."""
    from ketch.distribution.platforms import parse_platform

    host = host_platform()
    return parse_platform(text, host) if text else host
