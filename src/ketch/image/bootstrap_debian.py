"""A Debian base image made from Debian's package mirror, without a registry.

``bootstrap_debian`` runs mmdebstrap, which downloads the packages of one suite from
a mirror, installs them into a temporary chroot and writes that chroot as a tar to
its stdout. The tar is rewritten on the fly into the layer of a one-layer OCI image,
stored like the busybox image of :mod:`ketch.image.bootstrap`::

    manifest (application/vnd.oci.image.manifest.v1+json)
      config   architecture/os of this host, Env PATH, Cmd ["bash"],
               created = the mirror's Release date (SOURCE_DATE_EPOCH)
      layers   [gzip'd tar of the rootfs]

What the rootfs holds, and why:

- the packages of mmdebstrap's ``--variant`` (default ``apt``: the Essential:yes set
  plus apt, so ``apt-get install`` works), with merged ``/usr`` made the way debootstrap
  makes it (mmdebstrap's ``maybe-merged-usr`` hooks, so ``usr-is-merged`` is installed
  rather than ``usrmerge`` and perl);
- ``/etc/apt/sources.list`` naming the mirror and suite it was built from;
- no ``/etc/hostname`` or ``/etc/resolv.conf`` (mmdebstrap copies the host's in; the
  runtime provides both), nothing under ``/dev`` (the runtime mounts it), no apt
  package lists or caches;
- for ``-slim``: dpkg excludes man pages, docs (copyrights kept) and translations,
  written to ``/etc/dpkg/dpkg.cfg.d/99mmdebstrap`` so later installs obey it too.

Reproducibility. SOURCE_DATE_EPOCH is the ``Date:`` of the suite's Release file, so
mmdebstrap's own clean-ups apply; the layer lists entries in mmdebstrap's order (GNU
tar's ``--sort=name``), every entry has that one mtime, numeric owners only and no
pax time records, and gzip is written with mtime 0 and no file name. Two builds of the
same suite, variant and mirror give the same digests as long as the mirror serves the
same Release; a mirror that moved on (a point release, a security update in
``-updates``), another mirror URL (it is written into sources.list) or another
architecture gives a different image.
"""

from __future__ import annotations

import collections
import email.utils
import gzip
import logging
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, cast

from ketch.content import ContentStore
from ketch.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from ketch.image.bootstrap import _HashingWriter, store_layer_image
from ketch.image.store import Image, ImageStore
from ketch.sys.mount import umount
from ketch.sys.prctl import set_pdeathsig

__all__ = [
    "DEFAULT_MIRROR",
    "DEFAULT_VARIANT",
    "VARIANTS",
    "DebianTarget",
    "Release",
    "bootstrap_debian",
    "default_mirror",
    "fetch_release",
    "host_mirror",
    "mmdebstrap_command",
    "parse_target",
    "rewrite_layer",
]

log = logging.getLogger(__name__)

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_VARIANT = "apt"
# mmdebstrap's variants that give a system apt can work in ("extract" and "custom"
# install nothing without --include).
VARIANTS = ("essential", "apt", "minbase", "buildd", "required", "important", "standard")
MMDEBSTRAP = "mmdebstrap"
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/maybe-merged-usr"
# Docker Hub's -slim images drop the same (debuerreotype-slimify's list, roughly).
SLIM_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)
_SUITE_RE = re.compile(r"[a-z][a-z0-9.+-]*")
_CHUNK = 1 << 20
_RELEASE_TIMEOUT = 20.0


@dataclass(frozen=True)
class DebianTarget:
    """What to build: ``debian:<suite>[-slim]`` (``debian``/``debian:latest``: stable)."""

    suite: str
    slim: bool = False
    tag: str = "latest"

    @property
    def name(self) -> str:
        """The image's default name, e.g. ``debian:bookworm-slim``."""
        return f"debian:{self.tag}"


def parse_target(ref: str) -> DebianTarget:
    """Parse ``debian[:suite[-slim]]``. InvalidArgument for another distribution or a
    malformed suite (whether the mirror has the suite is :func:`fetch_release`'s)."""
    dist, _, tag = ref.partition(":")
    if dist != "debian":
        raise InvalidArgument(f"don't know how to bootstrap {ref!r}: unknown distribution "
                              f"{dist!r} (known: debian)")
    tag = tag or "latest"
    suite, slim = tag, False
    if tag.endswith("-slim"):
        suite, slim = tag.removesuffix("-slim"), True
    if suite == "latest":
        suite = "stable"
    if not _SUITE_RE.fullmatch(suite):
        raise InvalidArgument(f"{ref!r}: {suite!r} is not a Debian suite name "
                              "(like bookworm, trixie, stable, sid)")
    return DebianTarget(suite, slim, tag)


@dataclass(frozen=True)
class Release:
    """The head of a suite's Release file on a mirror."""

    suite: str        # as asked (bookworm, stable, …)
    codename: str     # Codename: field ("" if absent)
    date: int         # Date: field, seconds since the epoch (the SOURCE_DATE_EPOCH)


def _check_mirror(mirror: str) -> str:
    url = urllib.parse.urlsplit(mirror)
    if url.scheme not in ("http", "https", "file") or any(c.isspace() for c in mirror) \
            or (url.scheme != "file" and not url.netloc):
        raise InvalidArgument(f"--mirror {mirror!r}: want an http://, https:// or file:// URL "
                              "of a Debian archive (like http://deb.debian.org/debian)")
    return mirror.rstrip("/")


def fetch_release(mirror: str, suite: str, *, timeout: float = _RELEASE_TIMEOUT) -> Release:
    """Read ``<mirror>/dists/<suite>/Release`` up to its ``Date:``.

    NotFound if the mirror has no such suite, Unavailable if the mirror does not answer,
    InvalidArgument for a malformed mirror URL or a Release file without a date.
    """
    url = f"{_check_mirror(mirror)}/dists/{suite}/Release"
    fields: dict[str, str] = {}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            # The header fields come first; stop at the first indented line (the start
            # of the checksum lists), which spares reading the whole file.
            for raw in resp:
                line = raw.decode("utf-8", "replace")
                if not line.strip() or line[0].isspace():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise NotFound(f"no suite {suite!r} on the mirror {mirror} ({url}: 404)") from None
        raise Unavailable(f"mirror {mirror}: {url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(reason, FileNotFoundError):  # a file:// mirror
            raise NotFound(f"no suite {suite!r} on the mirror {mirror} ({url} is missing)"
                           ) from None
        raise Unavailable(f"mirror {mirror} is unreachable: {reason}") from None
    if "Date" not in fields:
        raise InvalidArgument(f"{url}: not a Release file (no Date: field)")
    when = email.utils.parsedate_to_datetime(fields["Date"])
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return Release(suite, fields.get("Codename", ""), int(when.timestamp()))


# ---- the host's apt sources -> a default mirror -----------------------------------------

def _one_line_sources(text: str) -> Iterator[tuple[list[str], list[str], str]]:
    """(uris, suites, options) of each ``deb`` line of a sources.list."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb ") and not line.startswith("deb\t"):
            continue
        rest = line[3:].strip()
        options = ""
        if rest.startswith("["):
            options, _, rest = rest[1:].partition("]")
        words = rest.split()
        if len(words) >= 2:
            yield [words[0]], [words[1]], options


def _deb822_sources(text: str) -> Iterator[tuple[list[str], list[str], str]]:
    """(uris, suites, signed-by) of each enabled ``deb`` stanza of a .sources file."""
    stanza: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza and "deb" in stanza.get("types", "").split() \
                    and stanza.get("enabled", "yes").lower() != "no":
                yield (stanza.get("uris", "").split(), stanza.get("suites", "").split(),
                       stanza.get("signed-by", ""))
            stanza, key = {}, ""
        elif line[0].isspace() and key:
            stanza[key] += " " + line.strip()
        else:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()


def host_mirror(etc_apt: str = "/etc/apt") -> str | None:
    """The Debian mirror this host's apt uses, or None.

    The first ``deb`` source, in apt's reading order (sources.list, then
    sources.list.d/*.list and *.sources by name), that looks like the Debian archive:
    its URI ends in ``/debian`` or it is signed by a debian-archive keyring, and it
    carries a suite other than ``-security`` (security lives in another archive).
    Only http(s):// and file:// URIs count.
    """
    root = Path(etc_apt)
    files = [root / "sources.list"]
    parts = root / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        entries = _deb822_sources(text) if path.suffix == ".sources" else _one_line_sources(text)
        for uris, suites, extra in entries:
            if not any(not s.endswith("-security") for s in suites):
                continue
            for uri in uris:
                if not uri.startswith(("http://", "https://", "file:/")):
                    continue  # mirror+file:, cdrom:, tor+http: … are apt's, not ours
                if uri.rstrip("/").endswith("/debian") or "debian-archive-keyring" in extra:
                    return uri.rstrip("/")
    return None


def default_mirror() -> str:
    """The host's Debian mirror (:func:`host_mirror`), else deb.debian.org."""
    return host_mirror() or DEFAULT_MIRROR


# ---- mmdebstrap and the layer ------------------------------------------------------------

def mmdebstrap_command(target: DebianTarget, mirror: str, variant: str = DEFAULT_VARIANT,
                       *, mmdebstrap: str = MMDEBSTRAP) -> list[str]:
    """The mmdebstrap argv that writes ``target``'s rootfs as a tar to stdout."""
    if variant not in VARIANTS:
        raise InvalidArgument(f"--variant {variant!r}: want one of {', '.join(VARIANTS)}")
    argv = [mmdebstrap, f"--variant={variant}", "--format=tar"]
    if os.path.isdir(MERGED_USR_HOOKS):
        argv.append(f"--hook-dir={MERGED_USR_HOOKS}")
    if target.slim:
        argv += [f"--dpkgopt={opt}" for opt in SLIM_DPKG_OPTS]
    return [*argv, target.suite, "-", _check_mirror(mirror)]


def _relative(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    name = name.strip("/")
    return "" if name == "." else name


def _dropped(name: str) -> bool:
    """Paths mmdebstrap leaves that the image must not carry (see the module doc)."""
    if name in ("etc/hostname", "etc/resolv.conf"):
        return True
    head, _, leaf = name.rpartition("/")
    if head == "var/lib/apt/lists" or name.startswith("var/lib/apt/lists/partial/"):
        return leaf not in ("lock", "partial")
    if head == "var/cache/apt":
        return leaf.endswith(".bin")
    if head == "var/cache/apt/archives":
        return leaf.endswith(".deb")
    return False


def rewrite_layer(src: IO[bytes], out: IO[bytes], mtime: int) -> int:
    """Copy mmdebstrap's tar from ``src`` to ``out`` as the image layer; entries written.

    Paths lose their ``./``; the root entry, /dev's contents and what :func:`_dropped`
    names are left out; every entry gets ``mtime`` and no owner names; pax records other
    than extended attributes are dropped. Order is kept, except that the ``dev``
    directory (which mmdebstrap writes first) moves to its sorted place.
    """
    written = 0
    pending_dev: tarfile.TarInfo | None = None
    with tarfile.open(fileobj=src, mode="r|") as tin, \
            tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tout:
        for ti in tin:
            name = _relative(ti.name)
            if not name:
                continue
            top = name.split("/", 1)[0]
            if top == "dev":
                if name == "dev" and ti.isdir():
                    pending_dev = ti
                continue
            if pending_dev is not None and top > "dev":
                tout.addfile(_normalised(pending_dev, "dev", mtime))
                pending_dev, written = None, written + 1
            if _dropped(name):
                continue
            ti = _normalised(ti, name, mtime)
            tout.addfile(ti, tin.extractfile(ti) if ti.isreg() else None)
            written += 1
        if pending_dev is not None:
            tout.addfile(_normalised(pending_dev, "dev", mtime))
            written += 1
    return written


def _normalised(ti: tarfile.TarInfo, name: str, mtime: int) -> tarfile.TarInfo:
    ti.name = name
    if ti.islnk():
        ti.linkname = _relative(ti.linkname)
    ti.mtime = mtime
    ti.uname = ti.gname = ""
    ti.pax_headers = {k: v for k, v in ti.pax_headers.items() if k.startswith("SCHILY.xattr.")}
    return ti


def _mounts_under(root: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # mountinfo writes space, tab, newline and backslash as \ooo
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[4])
            if target == root or target.startswith(root + "/"):
                found.append(target)
    return found


def _release_mounts(root: str) -> None:
    """mmdebstrap unmounts its chroot's /proc, /sys and /dev itself, even when stopped
    with SIGTERM; should one be left (SIGKILL), detach it before the directory holding it
    is removed, so the removal never walks into the host's /dev or /proc."""
    for target in reversed(_mounts_under(root)):
        log.warning("bootstrap: %s still mounted after mmdebstrap; detaching it", target)
        umount(target, 2)  # MNT_DETACH


class _LogReader(threading.Thread):
    """Reads mmdebstrap's stderr: keeps the last lines for errors, passes each on."""

    def __init__(self, stream: IO[bytes], on_log: Callable[[str], None] | None) -> None:
        super().__init__(name="mmdebstrap-log", daemon=True)
        self.stream, self.on_log = stream, on_log
        self.tail: collections.deque[str] = collections.deque(maxlen=40)

    def run(self) -> None:
        for raw in self.stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            log.debug("mmdebstrap: %s", line)
            if self.on_log is not None:
                try:
                    self.on_log(line)
                except Exception:  # a broken progress display must not stop the build
                    log.exception("bootstrap: on_log failed")

    def errors(self) -> str:
        lines = [ln for ln in self.tail if ln.startswith("E:")] or list(self.tail)[-5:]
        return "; ".join(lines) or "(no output)"


def _chroot_parent() -> str | None:
    """Where mmdebstrap (root mode) makes its chroot: a fresh 0755 directory in the
    system temp dir. Not under the caller's work directory: that may sit below a 0700
    one, and a chroot the ``_apt`` user cannot reach makes mmdebstrap turn off apt's
    sandbox, which changes the image (apt's partial/ directories end up owned by root
    instead of _apt). None when not root: unshare mode needs a directory its unshared
    user can write to, so mmdebstrap's own choice (TMPDIR or /tmp) stands."""
    if os.geteuid() != 0:
        return None
    path = tempfile.mkdtemp(prefix="ketch-mmdebstrap-")
    os.chmod(path, 0o755)
    return path


def _build_layer(argv: list[str], epoch: int, layer_path: str,
                 on_log: Callable[[str], None] | None) -> str:
    """Run mmdebstrap, rewriting its tar into gzip'd ``layer_path``; the diff_id."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}
    chroot_parent = _chroot_parent()
    if chroot_parent is not None:
        env["TMPDIR"] = chroot_parent
    try:
        return _run_mmdebstrap(argv, env, layer_path, epoch, on_log)
    finally:
        if chroot_parent is not None:
            _release_mounts(chroot_parent)
            shutil.rmtree(chroot_parent, ignore_errors=True)


def _run_mmdebstrap(argv: list[str], env: dict[str, str], layer_path: str, epoch: int,
                    on_log: Callable[[str], None] | None) -> str:
    log.info("bootstrap: %s", " ".join(argv))
    parent = os.getpid()

    def die_with_us() -> None:  # in the child: if this process is killed (even SIGKILL),
        set_pdeathsig(signal.SIGTERM)  # mmdebstrap gets SIGTERM and removes its mounts
        if os.getppid() != parent:  # we died before that took effect
            os._exit(1)

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, preexec_fn=die_with_us)
    assert proc.stdout is not None and proc.stderr is not None
    reader = _LogReader(proc.stderr, on_log)
    reader.start()
    tar_error: Exception | None = None
    try:
        with open(layer_path, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                              compresslevel=6) as gz:
            tarw = _HashingWriter(cast(IO[bytes], gz))
            rewrite_layer(proc.stdout, cast(IO[bytes], tarw), epoch)
        while proc.stdout.read(_CHUNK):  # the tar's padding after its end marker
            pass
    except (tarfile.TarError, OSError, EOFError) as e:
        tar_error = e
    except BaseException:
        _stop(proc)
        raise
    finally:
        if tar_error is not None:
            _stop(proc)
        rc = proc.wait()
        reader.join()
        proc.stdout.close()
        proc.stderr.close()
    if rc != 0:
        raise Unavailable(f"mmdebstrap failed (exit status {rc}): {reader.errors()}")
    if tar_error is not None:
        raise Unavailable(f"mmdebstrap wrote a broken tar: {tar_error}")
    return "sha256:" + tarw.hash.hexdigest()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (mmdebstrap then unmounts and removes its chroot), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def bootstrap_debian(store: ImageStore, content: ContentStore, target: DebianTarget, *,
                     mirror: str | None = None, variant: str = DEFAULT_VARIANT,
                     name: str | None = None, mmdebstrap: str = MMDEBSTRAP,
                     on_log: Callable[[str], None] | None = None,
                     workdir: str | None = None) -> Image:
    """Build ``target`` from ``mirror`` (default :func:`default_mirror`) and tag it
    ``name`` (default ``target.name``, e.g. ``debian:bookworm``).

    Lifecycle: the suite's Release is read first (its date becomes SOURCE_DATE_EPOCH and
    the config's ``created``), then mmdebstrap runs with its chroot in a temporary
    directory of the system's temp dir, and the layer is written to one under
    ``workdir`` (default: the temp dir too); both are removed afterwards, whatever happens;
    ``on_log`` gets each line mmdebstrap writes to stderr (``I: downloading packages…``),
    from another thread. Only a complete layer is ingested into ``content``.

    Errors: InvalidArgument (variant, mirror URL), FailedPrecondition (mmdebstrap not
    installed), NotFound (the mirror has no such suite), Unavailable (the mirror does
    not answer, or mmdebstrap failed; the message carries its ``E:`` lines).
    """
    mirror = _check_mirror(mirror or default_mirror())
    argv = mmdebstrap_command(target, mirror, variant, mmdebstrap=mmdebstrap)
    exe = shutil.which(mmdebstrap)
    if exe is None:
        raise FailedPrecondition(f"{mmdebstrap} is not installed; bootstrapping Debian needs it "
                                 "(apt-get install mmdebstrap)")
    argv[0] = exe
    release = fetch_release(mirror, target.suite)
    created = datetime.fromtimestamp(release.date, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with tempfile.TemporaryDirectory(prefix="ketch-bootstrap-debian-", dir=workdir) as tmp:
        layer_path = os.path.join(tmp, "layer.tar.gz")
        diff_id = _build_layer(argv, release.date, layer_path, on_log)
        created_by = (f"ketch image bootstrap {target.name} (mmdebstrap --variant={variant} "
                      f"{target.suite} {mirror})")
        return store_layer_image(store, content, layer_path, diff_id,
                                 name=name or target.name, created=created,
                                 created_by=created_by, cmd=["bash"])
