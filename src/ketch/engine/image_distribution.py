"""Pull, push and login: the image service's side that talks to registries.

The work is in :mod:`ketch.engine.pull` and :mod:`ketch.engine.push`; this mixin of
:class:`ketch.engine.images.ImageService` turns API arguments into references and
credentials, writes the image's name once a pull is complete (under the service's
lock, after checking every blob is there), and publishes ``pull``/``push`` events.

After a push it records the name ``repo@<pushed manifest digest>`` for the image, as
dockerd does: that is the image's ``RepoDigests`` entry for the repository (the pushed
manifest is not the local one when layers were gzip'd on the way out), and
``docker pull``/``run repo@<digest>`` refer to the local image. Such a pull asks the
registry for the manifest and, when its config is the local image's, pulls nothing
(dockerd: "the image already exists locally").
One :class:`~ketch.distribution.transport.Transport` is shared, so connections and
the scheme chosen for loopback registries are reused from pull to pull.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from ketch.content import ContentStore
from ketch.engine import layerstage
from ketch.engine.events import EventBus
from ketch.engine.image_core import ImageCore, familiar
from ketch.errors import KetchError, NotFound
from ketch.image import blobs, reference
from ketch.image.store import Image, ImageStore, host_platform
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Platform
from ketch.snapshot import Snapshotter

if TYPE_CHECKING:  # the registry client is imported at the first pull, push or login:
    # a daemon that never talks to a registry does not hold it in memory
    from ketch.distribution.auth import Credentials
    from ketch.distribution.client import Registry
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
        if ref.digest is not None and self._up_to_date(registry, ref, say):
            return out
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
            digest, _ = pusher.push(rec, ref.domain, ref.path, r.tag or reference.DEFAULT_TAG)
            self._record_pushed(rec, reference.Reference(ref.domain, ref.path, digest=digest))
            self._publish("push", rec.id, familiar(rec.name))
        return out

    def _record_pushed(self, rec: Image, pinned: reference.Reference) -> None:
        """Name the image ``rec`` belongs to ``pinned`` (``repo@<pushed digest>``),
        pointing at ``rec``'s local target (see the module doc). Nothing changes when
        the image already has that name (a pull by digest: its target is the registry's
        manifest, kept) or when it was removed while being pushed."""
        name = str(pinned)
        with self._mu:
            entry = self._images().get(rec.id)
            if entry is None:
                log.info("image %s was removed during its push; %s not recorded",
                         rec.id, pinned.familiar())
                return
            if any(r.name == name for r in entry.records):
                return
            self._set_name(name, rec.target)

    def _up_to_date(self, registry: Registry, ref: reference.Reference, say: Emit) -> bool:
        """A pull of ``repo@digest`` that needs nothing: a local image is known by that
        reference (the name a push or an earlier pull recorded, or a tag of the
        repository pointing at that manifest) and the registry's manifest of that digest
        has this image's config. Then the name is recorded, the messages of an up to
        date pull are sent and True returned. False sends nothing: the pull goes on
        (and reports any registry error itself)."""
        name = str(ref)
        try:
            rec = self.store.get(name)
        except NotFound:
            return False
        try:
            data, media, _ = registry.get_manifest(ref.path, str(ref.digest))
            config = json.loads(data)["config"]["digest"] \
                if media in mt.MANIFEST_TYPES else None
        except (KetchError, OSError, ValueError, KeyError, TypeError) as e:
            log.debug("pull %s: checking the local image: %s", ref.familiar(), e)
            return False
        if config != rec.id:
            return False
        with self._mu:
            try:
                rec = self.store.get(name)
                blobs.closure(self.content, rec.target, strict=True)
            except NotFound:
                return False
            if config != rec.id:
                return False
            if rec.name != name:
                rec, _ = self._set_name(name, rec.target)
        repo = reference.Reference(ref.domain, ref.path).familiar()
        say({"status": f"Pulling from {repo}", "id": str(ref.digest)})
        self._publish("pull", rec.id, familiar(name))
        say({"status": f"Digest: {ref.digest}"})
        say({"status": f"Status: Image is up to date for {ref.familiar()}"})
        return True

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
