"""Image archives: ``docker save``/``docker load`` tarballs, and layer tarballs to blobs.

One archive is written, readable two ways (what Docker 25+ writes)::

    blobs/sha256/<hex>   every blob of the saved images: index, manifests, configs,
                         layers exactly as the content store holds them (digests and
                         so the manifest digests survive a round trip)
    oci-layout           {"imageLayoutVersion": "1.0.0"}
    index.json           OCI index; one descriptor per saved name, annotated with
                         io.containerd.image.name (full name) and
                         org.opencontainers.image.ref.name (the tag)
    manifest.json        docker-archive: [{"Config", "RepoTags", "Layers"}] with paths
                         into blobs/, one entry per image
    repositories         legacy {repo: {tag: top layer}}

``read_archive`` takes either layout (an ``index.json`` wins; names then come from its
annotations, else from ``manifest.json``), plain or gzip-compressed. The archive is
untrusted: members are found by name in the tar and read as streams, never extracted
to paths it names; a member whose name is absolute or has ``..``, a link, a device or
a duplicate name is refused; every blob is checked against its digest and size, and
every layer's uncompressed digest against the config's ``diff_ids``. Blobs go into the
content store first; names are the caller's to add afterwards, so a bad archive
(``InvalidArgument`` saying what is wrong) leaves no image behind, and the blobs this
call created are removed again.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import posixpath
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, cast

from ketch.content import ContentStore
from ketch.errors import InvalidArgument, KetchError, NotFound
from ketch.image import reference
from ketch.image.blobs import (
    CHUNK,
    LABEL_UNCOMPRESSED,
    Gunzip,
    Tee,
    closure,
    compression,
    exists,
    finish,
    new_writer,
)
from ketch.image.store import Image, ImageStore, resolve_platform
from ketch.oci import mediatypes as mt
from ketch.oci.descriptor import Descriptor
from ketch.oci.digest import Digest

__all__ = [
    "ArchiveContent",
    "LoadedImage",
    "SaveEntry",
    "load",
    "read_archive",
    "resolve_save_names",
    "save",
    "write_archive",
]

NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
_JSON_MAX = 8 << 20
_MAX_DEPTH = 8
_GZIP = b"\x1f\x8b"


# -- reading archives ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoadedImage:
    """One image found in an archive: its target and the full names it carries."""

    target: Descriptor
    names: tuple[str, ...] = ()


@dataclass
class ArchiveContent:
    """What ``read_archive`` found: images in archive order, and the blobs it used."""

    images: list[LoadedImage] = field(default_factory=list)
    blobs: set[Digest] = field(default_factory=set)
    created: set[Digest] = field(default_factory=set)


def _member_name(name: str) -> str:
    """The normalised archive path; InvalidArgument for absolute or ``..`` paths."""
    if name.startswith("/") or "\0" in name:
        raise InvalidArgument(f"invalid archive: entry {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(f"invalid archive: entry {name!r} escapes the archive (..)")
    return "/".join(parts)


class _Archive:
    """The members of an archive tar, by normalised name (regular files only)."""

    def __init__(self, f: IO[bytes]) -> None:
        try:
            self.tf = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115 - closed with f
            members = self.tf.getmembers()
        except (tarfile.TarError, EOFError) as e:
            raise InvalidArgument(f"invalid archive: not a tar file: {e}") from None
        self.files: dict[str, tarfile.TarInfo] = {}
        seen: set[str] = set()
        for m in members:
            name = _member_name(m.name)
            if m.issym() or m.islnk():
                raise InvalidArgument(f"invalid archive: entry {m.name!r} is a link")
            if not (m.isfile() or m.isdir()):
                raise InvalidArgument(f"invalid archive: entry {m.name!r} is not a "
                                      f"regular file or directory")
            if name in seen and not m.isdir():
                raise InvalidArgument(f"invalid archive: entry {m.name!r} appears twice")
            seen.add(name)
            if m.isfile():
                self.files[name] = m

    def has(self, path: str) -> bool:
        return _member_name(path) in self.files

    def open(self, path: str) -> IO[bytes]:
        m = self.files.get(_member_name(path))
        if m is None:
            raise InvalidArgument(f"invalid archive: {path} is missing")
        f = self.tf.extractfile(m)
        if f is None:  # pragma: no cover - regular files always have a reader
            raise InvalidArgument(f"invalid archive: {path} cannot be read")
        return f

    def json(self, path: str) -> Any:
        m = self.files.get(_member_name(path))
        if m is not None and m.size > _JSON_MAX:
            raise InvalidArgument(f"invalid archive: {path} is too large ({m.size} bytes)")
        with self.open(path) as f:
            data = f.read()
        try:
            return json.loads(data)
        except ValueError as e:
            raise InvalidArgument(f"invalid archive: {path}: invalid JSON: {e}") from None


def _blob_path(d: Digest) -> str:
    return f"blobs/{d.algorithm}/{d.hex}"


class _Reader:
    """One ``read_archive`` call: ingests blobs, remembering what it created."""

    def __init__(self, content: ContentStore, archive: _Archive) -> None:
        self.content = content
        self.ar = archive
        self.out = ArchiveContent()
        self.done: dict[Digest, str | None] = {}

    def blob(self, path: str, expected: Digest | None = None, size: int | None = None,
             *, layer: bool = False, what: str = "blob") -> tuple[Digest, int, str | None]:
        """Ingest member ``path``; (digest, size, diff_id for a plain/gzip layer)."""
        with self.ar.open(path) as f:
            head = f.read(6)
            kind = compression(head) if layer else "none"
            known = expected is not None and exists(self.content, expected)
            w = None if known else new_writer(self.content, "load")
            try:
                raw = Tee(f, w, head)
                gun = Gunzip() if kind == "gzip" else None
                bad: InvalidArgument | None = None  # reported after the digest check
                while data := raw.read(CHUNK):
                    if gun is not None and bad is None:
                        try:
                            gun.feed(data)
                        except InvalidArgument as e:
                            bad = e
                if gun is not None and bad is None:
                    try:
                        gun.finish()
                    except InvalidArgument as e:
                        bad = e
                got = raw.digester.digest()
                if size is not None and raw.size != size:
                    raise InvalidArgument(f"invalid archive: {what} {path}: size {raw.size} "
                                          f"but its descriptor says {size}")
                if expected is not None and got != expected:
                    raise InvalidArgument(f"invalid archive: {what} {path}: digest mismatch: "
                                          f"expected {expected}, got {got}")
                if bad is not None:
                    raise InvalidArgument(f"invalid archive: {what} {path}: {bad}")
            except BaseException:
                if w is not None:
                    w.close()
                    with contextlib.suppress(KetchError):
                        self.content.abort(w.ref)
                raise
            diff_id = None
            labels = None
            if layer and kind in ("gzip", "none"):
                usize = gun.size if gun is not None else raw.size
                diff_id = f"sha256:{gun.hash.hexdigest()}" if gun is not None else str(got)
                labels = {LABEL_UNCOMPRESSED: str(usize)}
            if w is not None:
                _, new = finish(self.content, w, raw.size, got, labels)
                if new:
                    self.out.created.add(got)
            elif labels is not None:
                self.content.update_labels(got, labels)
        self.out.blobs.add(got)
        return got, raw.size, diff_id

    def json_blob(self, desc: Descriptor, what: str) -> dict[str, Any]:
        path = _blob_path(desc.digest)
        if desc.size > _JSON_MAX:
            raise InvalidArgument(f"invalid archive: {what} {desc.digest} is too large")
        self.blob(path, desc.digest, desc.size, what=what)
        obj = _loads(self.content.read(desc.digest), f"{what} {desc.digest}")
        if not isinstance(obj, dict):
            raise InvalidArgument(f"invalid archive: {what} {desc.digest}: not a JSON object")
        return obj

    # OCI image layout

    def oci(self) -> None:
        if self.ar.has("oci-layout"):
            layout = self.ar.json("oci-layout")
            if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
                raise InvalidArgument("invalid archive: oci-layout: unsupported "
                                      "imageLayoutVersion")
        index = self.ar.json("index.json")
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise InvalidArgument("invalid archive: index.json: 'manifests' must be an array")
        repo_tags = self._repo_tags() if self.ar.has("manifest.json") else {}
        merged: dict[Digest, list[str]] = {}
        targets: dict[Digest, Descriptor] = {}
        for raw in index["manifests"]:
            try:
                desc = Descriptor.from_json(raw)
            except InvalidArgument as e:
                raise InvalidArgument(f"invalid archive: index.json: {e}") from None
            if desc.media_type not in mt.INDEX_TYPES | mt.MANIFEST_TYPES:
                continue
            config = self.tree(desc, 0, required=True)
            names = merged.setdefault(desc.digest, [])
            targets[desc.digest] = Descriptor(desc.media_type, desc.digest, desc.size)
            name = desc.annotations.get(NAME_ANNOTATION) or _full_ref(
                desc.annotations.get(REF_ANNOTATION, ""))
            found = [name] if name else repo_tags.get(config or "", [])
            for n in found:
                full = _normalize(n)
                if full not in names:
                    names.append(full)
        self.out.images = [LoadedImage(targets[d], tuple(n)) for d, n in merged.items()]

    def tree(self, desc: Descriptor, depth: int, *, required: bool) -> str | None:
        """Ingest ``desc`` and what it points at; the config digest of a manifest."""
        if depth > _MAX_DEPTH:
            raise InvalidArgument("invalid archive: indexes nested too deeply")
        if desc.digest in self.done:
            return self.done[desc.digest]
        self.done[desc.digest] = self._tree(desc, depth, required=required)
        return self.done[desc.digest]

    def _tree(self, desc: Descriptor, depth: int, *, required: bool) -> str | None:
        if not self.ar.has(_blob_path(desc.digest)):
            if required:
                raise InvalidArgument(f"invalid archive: blob {desc.digest} "
                                      f"({desc.media_type}) is missing")
            return None
        if desc.media_type in mt.INDEX_TYPES:
            obj = self.json_blob(desc, "index")
            for raw in obj.get("manifests") or []:
                child = Descriptor.from_json(raw)
                if child.media_type in mt.INDEX_TYPES | mt.MANIFEST_TYPES:
                    self.tree(child, depth + 1, required=False)
            return None
        if desc.media_type not in mt.MANIFEST_TYPES:
            return None
        obj = self.json_blob(desc, "manifest")
        try:
            config = Descriptor.from_json(obj.get("config"))
            layers = [Descriptor.from_json(r) for r in obj.get("layers") or []]
        except InvalidArgument as e:
            raise InvalidArgument(f"invalid archive: manifest {desc.digest}: {e}") from None
        cfg = self.json_blob(config, "config")
        diff_ids = (cfg.get("rootfs") or {}).get("diff_ids")
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
            raise InvalidArgument(f"invalid archive: config {config.digest}: rootfs.diff_ids "
                                  f"does not list one diff_id per layer")
        for i, (layer, want) in enumerate(zip(layers, diff_ids, strict=True)):
            _, _, got = self.blob(_blob_path(layer.digest), layer.digest, layer.size,
                                  layer=True, what=f"layer {i}")
            if got is not None and got != want:
                raise InvalidArgument(f"invalid archive: layer {i} ({layer.digest}): diff_id "
                                      f"{got} but the config says {want}")
        return str(config.digest)

    # docker-archive

    def _entries(self) -> list[dict[str, Any]]:
        entries = self.ar.json("manifest.json")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidArgument("invalid archive: manifest.json must be an array of objects")
        return entries

    def _repo_tags(self) -> dict[str, list[str]]:
        """config digest -> RepoTags of manifest.json (Config paths under blobs/)."""
        out: dict[str, list[str]] = {}
        for e in self._entries():
            cfg = str(e.get("Config") or "")
            if cfg.startswith("blobs/") and cfg.count("/") == 2:
                _, alg, hexpart = cfg.split("/")
                out[f"{alg}:{hexpart}"] = list(e.get("RepoTags") or [])
        return out

    def docker(self) -> None:
        for n, e in enumerate(self._entries()):
            cfg_path, layer_paths = e.get("Config"), e.get("Layers")
            tags = e.get("RepoTags") or []
            if not isinstance(cfg_path, str) or not isinstance(layer_paths, list) \
                    or not all(isinstance(p, str) for p in layer_paths) \
                    or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise InvalidArgument(f"invalid archive: manifest.json entry {n}: want Config "
                                      f"(string), Layers and RepoTags (arrays of strings)")
            cfg_digest, cfg_size, _ = self.blob(cfg_path, _path_digest(cfg_path),
                                                what="config")
            cfg = _loads(self.content.read(cfg_digest), cfg_path)
            diff_ids = (cfg.get("rootfs") or {}).get("diff_ids") if isinstance(cfg, dict) \
                else None
            if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_paths):
                raise InvalidArgument(f"invalid archive: {cfg_path}: rootfs.diff_ids does not "
                                      f"list one diff_id per layer of manifest.json")
            layers = []
            for i, (path, want) in enumerate(zip(layer_paths, diff_ids, strict=True)):
                with self.ar.open(path) as f:
                    kind = compression(f.read(6))
                if kind not in ("gzip", "none"):
                    raise InvalidArgument(f"invalid archive: layer {i} ({path}): "
                                          f"{kind}-compressed layers are not supported")
                d, size, got = self.blob(path, _path_digest(path), layer=True,
                                         what=f"layer {i}")
                if got != want:
                    raise InvalidArgument(f"invalid archive: layer {i} ({path}): diff_id "
                                          f"{got} but the config says {want}")
                media = mt.OCI_LAYER_GZIP if kind == "gzip" else mt.OCI_LAYER
                layers.append(Descriptor(media, d, size).to_json())
            manifest = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                        "config": Descriptor(mt.OCI_CONFIG, cfg_digest, cfg_size).to_json(),
                        "layers": layers}
            data = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
            w = new_writer(self.content, "load")
            w.write(data)
            digest, new = finish(self.content, w, len(data), None)
            if new:
                self.out.created.add(digest)
            self.out.blobs.add(digest)
            self.out.images.append(LoadedImage(Descriptor(mt.OCI_MANIFEST, digest, len(data)),
                                               tuple(_normalize(t) for t in tags)))


def _loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"invalid archive: {what}: invalid JSON: {e}") from None


def _path_digest(path: str) -> Digest | None:
    """The digest an archive path names (blobs/sha256/<hex> or legacy <hex>.json)."""
    parts = _member_name(path).split("/")
    with contextlib.suppress(InvalidArgument):
        if len(parts) == 3 and parts[0] == "blobs":
            return Digest(parts[1], parts[2])
        if len(parts) == 1 and parts[0].endswith(".json"):
            return Digest("sha256", parts[0].removesuffix(".json"))
    return None


def _full_ref(ref_name: str) -> str:
    """An ``org.opencontainers.image.ref.name`` that is a whole reference, else ""."""
    return ref_name if any(c in ref_name for c in "/:@") else ""


def _normalize(name: str) -> str:
    try:
        return str(reference.normalize(name))
    except InvalidArgument as e:
        raise InvalidArgument(f"invalid archive: image name {name!r}: {e}") from None


@contextlib.contextmanager
def _plain_tar(tar: IO[bytes], tmpdir: str | None) -> Iterator[IO[bytes]]:
    """``tar`` as a seekable plain tar: gunzipped or spooled to a temp file when needed."""
    seekable = getattr(tar, "seekable", None)
    src: IO[bytes]
    if seekable is not None and seekable():
        start = tar.tell()
        head = tar.read(2)
        tar.seek(start)
        if head != _GZIP:
            yield tar
            return
        src = cast(IO[bytes], gzip.GzipFile(fileobj=tar, mode="rb"))
    else:
        head = tar.read(2)
        stream = cast(IO[bytes], Tee(tar, None, head))
        src = cast(IO[bytes], gzip.GzipFile(fileobj=stream, mode="rb")) \
            if head == _GZIP else stream
    if tmpdir is not None:
        os.makedirs(tmpdir, mode=0o700, exist_ok=True)
    with tempfile.TemporaryFile(dir=tmpdir) as tmp:
        try:
            while chunk := src.read(CHUNK):
                tmp.write(chunk)
        except (EOFError, OSError, zlib.error) as e:
            raise InvalidArgument(f"invalid archive: bad gzip compression: {e}") from None
        tmp.seek(0)
        yield cast(IO[bytes], tmp)


def read_archive(content: ContentStore, tar: IO[bytes], *,
                 tmpdir: str | None = None) -> ArchiveContent:
    """Ingest the images of an archive (either layout, maybe gzip'd) into ``content``.

    Returns the images with their targets and names; adds no names anywhere. On
    ``InvalidArgument`` the blobs this call created are deleted again.
    """
    with _plain_tar(tar, tmpdir) as f:
        reader = _Reader(content, _Archive(f))
        try:
            if reader.ar.has("index.json"):
                reader.oci()
            elif reader.ar.has("manifest.json"):
                reader.docker()
            else:
                raise InvalidArgument("invalid archive: neither index.json (OCI layout) nor "
                                      "manifest.json (docker-archive) found")
        except BaseException:
            for d in reader.out.created:
                with contextlib.suppress(KetchError):
                    content.delete(d)
            raise
        return reader.out


def load(store: ImageStore, content: ContentStore, tar: IO[bytes]) -> list[str]:
    """Load an archive into ``store``: the full names given, or the IDs of unnamed images."""
    found = read_archive(content, tar, tmpdir=os.path.join(store.root, "tmp"))
    out = []
    for img in found.images:
        for name in img.names:
            out.append(store.put(name, img.target).name)
        if not img.names:
            out.append(_image_id(content, img.target))
    return out


def _image_id(content: ContentStore, target: Descriptor) -> str:
    try:
        desc = resolve_platform(content, target) if target.media_type in mt.INDEX_TYPES \
            else target
        return str(json.loads(content.read(desc.digest))["config"]["digest"])
    except (KetchError, KeyError, ValueError):
        return str(target.digest)


# -- writing archives ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SaveEntry:
    """An image to save: its store record and the full name to save it under (or None)."""

    image: Image
    name: str | None


def resolve_save_names(store: ImageStore, names: Sequence[str]) -> list[SaveEntry]:
    """What ``docker save`` means by ``names``: a name, every tag of a bare repository
    name, or an image ID (saved without a name). ``NotFound`` for unknown ones."""
    images = store.list()
    out: list[SaveEntry] = []
    for text in names:
        ref = None
        with contextlib.suppress(InvalidArgument):
            if not reference.is_image_id(text):
                ref = reference.parse(text)
        if ref is not None and ref.tag is None and ref.digest is None:
            repo = reference.normalize(ref).name
            tagged = [i for i in images if i.reference.name == repo and i.reference.tag]
            if tagged:
                out += [SaveEntry(i, i.name) for i in tagged]
                continue
        img = store.get(text)
        by_name = ref is not None and str(reference.normalize(ref)) == img.name
        out.append(SaveEntry(img, img.name if by_name else None))
    return out



def _manifest_of(content: ContentStore, target: Descriptor) -> dict[str, Any] | None:
    try:
        desc = resolve_platform(content, target) if target.media_type in mt.INDEX_TYPES \
            else target
        obj: dict[str, Any] = json.loads(content.read(desc.digest))
        return obj
    except NotFound:
        return None


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode = len(data), 0o644
    tf.addfile(ti, io.BytesIO(data))


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def write_archive(content: ContentStore, entries: Iterable[SaveEntry], out: IO[bytes]) -> None:
    """Write the archive of ``entries`` to ``out`` as a tar stream (see the module doc)."""
    index: list[dict[str, Any]] = []
    docker: dict[str, dict[str, Any]] = {}  # image id -> manifest.json entry
    repos: dict[str, dict[str, str]] = {}
    blobs: dict[Digest, Descriptor] = {}
    for e in entries:
        for cd in closure(content, e.image.target, strict=True):
            blobs.setdefault(cd.digest, cd)
        desc = Descriptor(e.image.target.media_type, e.image.target.digest,
                          e.image.target.size).to_json()
        ref = reference.normalize(e.name) if e.name else None
        if ref is not None:
            desc["annotations"] = {NAME_ANNOTATION: str(ref), REF_ANNOTATION: ref.tag or ""}
        if desc not in index:
            index.append(desc)
        manifest = _manifest_of(content, e.image.target)
        if manifest is None:
            continue
        entry = docker.setdefault(e.image.id, {
            "Config": _blob_path(Digest.parse(manifest["config"]["digest"])),
            "RepoTags": None,
            "Layers": [_blob_path(Digest.parse(d["digest"])) for d in manifest["layers"]],
        })
        if ref is not None and ref.tag:
            short = ref.familiar()
            tags = entry["RepoTags"] or []
            if short not in tags:
                tags.append(short)
            entry["RepoTags"] = tags
            if manifest["layers"]:
                top = Digest.parse(manifest["layers"][-1]["digest"]).hex
                repos.setdefault(short.rsplit(":", 1)[0], {})[ref.tag] = top
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        dirs = sorted({posixpath.dirname(_blob_path(d)) for d in blobs} | {"blobs"})
        for name in dirs:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
        for d in blobs:
            ti = tarfile.TarInfo(_blob_path(d))
            ti.mode = 0o644
            ti.size = content.info(d).size
            with content.open(d) as f:
                tf.addfile(ti, f)
        _add_bytes(tf, "index.json", _dump({"schemaVersion": 2, "mediaType": mt.OCI_INDEX,
                                            "manifests": index}))
        _add_bytes(tf, "manifest.json", _dump(list(docker.values())))
        _add_bytes(tf, "oci-layout", _dump({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(tf, "repositories", _dump(repos))


def save(store: ImageStore, content: ContentStore, names: Sequence[str],
         out: IO[bytes]) -> None:
    """``docker save``: the images ``names`` name, as one archive written to ``out``."""
    write_archive(content, resolve_save_names(store, names), out)

