"""``bootstrap_debian`` against Debian's mirror, as root: a real bookworm base image.

The mirror is the host's (as ``ketch image bootstrap debian:bookworm`` picks it); the
build tests skip, saying so, when it does not answer. One bookworm image is built per
module (about half a minute: mmdebstrap, then the layer rewrite) and checked the way a
user would: the manifest and config, then the layer applied with ketch's own layer
code into a directory, and apt run in it through chroot. A second build checks the
reproducibility claim. Everything lives under pytest's tmp dirs; nothing is cached
outside them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.content.local import LocalContentStore
from ketch.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from ketch.image.bootstrap_debian import (
    DebianTarget,
    Release,
    bootstrap_debian,
    default_mirror,
    fetch_release,
    host_mirror,
    mmdebstrap_command,
    parse_target,
    rewrite_layer,
)
from ketch.image.layer import apply_layer
from ketch.image.store import Image, ImageStore, host_platform
from tests.integration.test_image_bootstrap_unpack import image_schema

MIRROR = default_mirror()
SUITE = "bookworm"

needs_mmdebstrap = pytest.mark.skipif(not os.path.exists("/usr/bin/mmdebstrap"),
                                      reason="needs mmdebstrap (apt-get install mmdebstrap)")


def _release_or_skip() -> Release:
    try:
        return fetch_release(MIRROR, SUITE)
    except Unavailable as e:
        pytest.skip(f"Debian mirror unreachable, cannot bootstrap: {e}")


def _chroot_dirs() -> set[Path]:
    """mmdebstrap's chroot parents (made in the system temp dir, see _chroot_parent)."""
    return set(Path(tempfile.gettempdir()).glob("ketch-mmdebstrap-*"))


@dataclass
class Built:
    content: LocalContentStore
    images: ImageStore
    image: Image
    release: Release
    seconds: float
    work: Path
    chroot_dirs_before: set[Path]


def _build(base: Path) -> Built:
    release = _release_or_skip()
    content = LocalContentStore(str(base / "content"))
    images = ImageStore(str(base / "images"), content)
    work = base / "work"
    work.mkdir()
    lines: list[str] = []
    before = _chroot_dirs()
    t0 = time.monotonic()
    img = bootstrap_debian(images, content, parse_target(f"debian:{SUITE}"), mirror=MIRROR,
                           workdir=str(work), on_log=lines.append)
    took = time.monotonic() - t0
    assert any(ln.startswith("I: ") for ln in lines)  # mmdebstrap's log reached on_log
    return Built(content, images, img, release, took, work, before)


@pytest.fixture(scope="module")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    if not os.path.exists("/usr/bin/mmdebstrap"):
        pytest.skip("needs mmdebstrap (apt-get install mmdebstrap)")
    base = tmp_path_factory.mktemp("debian")
    built = _build(base)
    layer = built.images.layers(built.image)[0]
    print(f"\nbootstrap debian:{SUITE} from {MIRROR}: {built.seconds:.1f} s, "
          f"layer {layer.size / 1e6:.1f} MB gzip'd")
    yield built


@pytest.fixture(scope="module")
def rootfs(bookworm: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("rootfs")
    with bookworm.content.open(bookworm.images.layers(bookworm.image)[0].digest) as f:
        res = apply_layer(f, str(dest))
    cfg = bookworm.images.config(bookworm.image)
    assert res.diff_id == cfg["rootfs"]["diff_ids"][0]
    assert res.skipped == ()
    return dest


def test_image_is_one_layer_with_dockerhub_like_config(bookworm: Built) -> None:
    content, images, img = bookworm.content, bookworm.images, bookworm.image
    assert images.get("debian:bookworm") == img
    manifest = json.loads(content.read(img.target.digest))
    image_schema("image-manifest-schema.json").validate(manifest)
    assert len(manifest["layers"]) == 1
    assert manifest["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    cfg = images.config(img)
    image_schema("config-schema.json").validate(cfg)
    plat = host_platform()
    assert (cfg["os"], cfg["architecture"]) == (plat.os, plat.architecture)
    assert cfg["config"]["Cmd"] == ["bash"]
    assert cfg["config"]["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    # created = the Release date of the suite on the mirror (the SOURCE_DATE_EPOCH)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(bookworm.release.date))
    assert cfg["created"] == created
    assert cfg["history"] == [{"created": created, "created_by": (
        f"ketch image bootstrap debian:bookworm (mmdebstrap --variant=apt bookworm {MIRROR})")}]
    assert len(cfg["rootfs"]["diff_ids"]) == 1


def test_layer_tar_is_normalised(bookworm: Built) -> None:
    layer = bookworm.images.layers(bookworm.image)[0]
    with bookworm.content.open(layer.digest) as f:
        head = f.read(10)
    assert head[:2] == b"\x1f\x8b" and head[4:8] == b"\0\0\0\0"  # gzip, mtime 0
    assert head[3] & 0x08 == 0  # no file name in the gzip header
    with bookworm.content.open(layer.digest) as f, tarfile.open(fileobj=f, mode="r|gz") as tf:
        members = list(tf)
    names = [m.name for m in members]
    assert {m.mtime for m in members} == {bookworm.release.date}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    assert not [n for n in names if n.startswith(("./", "/")) or n in (".", "")]
    assert not [m.name for m in members if m.ischr() or m.isblk() or m.isfifo()]
    assert [n for n in names if n == "dev" or n.startswith("dev/")] == ["dev"]
    top = [n for n in names if "/" not in n]
    assert top == sorted(top)  # dev moved into its place
    # mmdebstrap's in-directory order (GNU tar --sort=name) is kept: siblings sorted
    etc = [n.removeprefix("etc/") for n in names if n.startswith("etc/") and n.count("/") == 1]
    assert etc == sorted(etc) and "debian_version" in etc
    hard = [m for m in members if m.islnk()]
    assert hard and all(m.linkname in names for m in hard)  # e.g. perl5.36.0 -> perl
    # owners are kept: apt's sandbox user (_apt, 42) owns its partial download directory
    partial = [m for m in members if m.name == "var/cache/apt/archives/partial"]
    assert [(m.uid, m.gid) for m in partial] == [(42, 0)]


def test_rootfs_is_debian_with_working_apt(bookworm: Built, rootfs: Path) -> None:
    assert (rootfs / "etc/debian_version").read_text().startswith("12.")
    assert (rootfs / "bin").is_symlink() and os.readlink(rootfs / "bin") == "usr/bin"
    # apt's sources point at the mirror the image came from
    sources = (rootfs / "etc/apt/sources.list").read_text()
    assert f"deb {MIRROR} bookworm main" in sources
    # the host's name and resolver are not baked in; apt's lists and caches are empty
    assert not (rootfs / "etc/hostname").exists()
    assert not (rootfs / "etc/resolv.conf").exists()
    lists = rootfs / "var/lib/apt/lists"
    assert sorted(p.name for p in lists.iterdir()) == ["lock", "partial"]
    assert not list((lists / "partial").iterdir())
    assert not list((rootfs / "var/cache/apt").glob("*.bin"))
    assert not list((rootfs / "var/cache/apt/archives").glob("*.deb"))
    assert not list((rootfs / "dev").iterdir())
    # merged /usr the debootstrap way: usr-is-merged, not usrmerge and its perl
    status = (rootfs / "var/lib/dpkg/status").read_text()
    pkgs = {ln.split()[1] for ln in status.splitlines() if ln.startswith("Package: ")}
    assert {"apt", "bash", "dpkg", "usr-is-merged"} <= pkgs
    assert "usrmerge" not in pkgs
    # apt and bash work inside it
    r = subprocess.run(["/usr/sbin/chroot", str(rootfs), "apt-get", "--version"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("apt 2.6")
    r = subprocess.run(["/usr/sbin/chroot", str(rootfs), "bash", "-c",
                        "dpkg --audit && echo ok"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    used = sum(p.stat().st_size for p in rootfs.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"\nrootfs {used / 1e6:.0f} MB, {len(pkgs)} packages")


def test_build_leaves_nothing_behind(bookworm: Built) -> None:
    assert list(bookworm.work.iterdir()) == []
    assert _chroot_dirs() <= bookworm.chroot_dirs_before
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines()
                if "/ketch-mmdebstrap-" in m]


def test_second_build_is_identical(bookworm: Built, tmp_path: Path) -> None:
    again = _build(tmp_path)
    if again.release != bookworm.release:
        pytest.skip("the mirror published a new Release between the two builds")
    print(f"\nsecond build: {again.seconds:.1f} s")
    assert again.image.target == bookworm.image.target  # same manifest digest


# ---- bad input: each names the problem --------------------------------------------------

def test_parse_target() -> None:
    assert parse_target("debian:bookworm") == DebianTarget("bookworm", False, "bookworm")
    assert parse_target("debian:bookworm-slim") == DebianTarget("bookworm", True,
                                                                "bookworm-slim")
    assert parse_target("debian").suite == "stable"
    assert parse_target("debian").name == "debian:latest"
    with pytest.raises(InvalidArgument, match="unknown distribution 'ubuntu'"):
        parse_target("ubuntu:jammy")
    with pytest.raises(InvalidArgument, match="'Book Worm' is not a Debian suite"):
        parse_target("debian:Book Worm")


def test_slim_and_variant_in_the_command() -> None:
    argv = mmdebstrap_command(parse_target("debian:bookworm-slim"), "http://m.example/debian",
                              "minbase")
    assert argv[:3] == ["mmdebstrap", "--variant=minbase", "--format=tar"]
    assert "--dpkgopt=path-exclude=/usr/share/man/*" in argv
    assert argv[-3:] == ["bookworm", "-", "http://m.example/debian"]
    with pytest.raises(InvalidArgument, match="--variant 'tiny'"):
        mmdebstrap_command(parse_target("debian:bookworm"), "http://m.example/debian", "tiny")
    with pytest.raises(InvalidArgument, match="--mirror 'deb http"):
        mmdebstrap_command(parse_target("debian:bookworm"), "deb http://x/debian bookworm")


def test_mmdebstrap_missing(tmp_path: Path) -> None:
    content = LocalContentStore(str(tmp_path / "content"))
    with pytest.raises(FailedPrecondition, match="mmdebstrap is not installed"):
        bootstrap_debian(ImageStore(str(tmp_path / "images"), content), content,
                         parse_target("debian:bookworm"), mirror="http://127.0.0.1:1/debian",
                         mmdebstrap="/nonexistent/mmdebstrap")


def test_unreachable_mirror() -> None:
    with pytest.raises(Unavailable, match=r"mirror http://127.0.0.1:1/debian is unreachable"):
        fetch_release("http://127.0.0.1:1/debian", "bookworm", timeout=5)


def test_unknown_suite_on_the_real_mirror() -> None:
    _release_or_skip()
    with pytest.raises(NotFound, match="no suite 'nosuchsuite' on the mirror"):
        fetch_release(MIRROR, "nosuchsuite")


def _file_mirror(tmp_path: Path) -> str:
    dists = tmp_path / "mirror/dists/bookworm"
    dists.mkdir(parents=True)
    (dists / "Release").write_text(
        "Origin: Debian\nSuite: oldstable\nCodename: bookworm\n"
        "Date: Sat, 11 Jul 2026 10:16:37 UTC\nArchitectures: amd64\n"
        "MD5Sum:\n 0123 42 main/binary-amd64/Packages\n")
    return f"file://{tmp_path}/mirror"


def test_release_date_and_missing_suite_on_a_file_mirror(tmp_path: Path) -> None:
    mirror = _file_mirror(tmp_path)
    rel = fetch_release(mirror, "bookworm")
    assert rel == Release("bookworm", "bookworm", 1783764997)
    with pytest.raises(NotFound, match="no suite 'trixie'"):
        fetch_release(mirror, "trixie")


@needs_mmdebstrap
def test_mmdebstrap_failure_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    """A mirror with a Release file but no packages: mmdebstrap starts, fails, and the
    error carries its E: lines; nothing stays mounted or on disk, nothing is stored."""
    mirror = _file_mirror(tmp_path)
    content = LocalContentStore(str(tmp_path / "content"))
    images = ImageStore(str(tmp_path / "images"), content)
    work = tmp_path / "work"
    work.mkdir()
    before = _chroot_dirs()
    with pytest.raises(Unavailable, match=r"mmdebstrap failed \(exit status \d+\): E: "):
        bootstrap_debian(images, content, parse_target("debian:bookworm"), mirror=mirror,
                         workdir=str(work))
    assert list(work.iterdir()) == []
    assert _chroot_dirs() <= before
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines()
                if "/ketch-mmdebstrap-" in m]
    assert images.list() == []


def test_host_mirror_from_apt_sources(tmp_path: Path) -> None:
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list.d/a-nodesource.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n"
        "Components: main\n")
    (apt / "sources.list.d/b-debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "# a comment\nTypes: deb\nURIs: http://snapshot.debian.org/archive/debian/20250520T0Z/\n"
        "Suites: bookworm bookworm-updates\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    assert host_mirror(str(apt)) == "http://snapshot.debian.org/archive/debian/20250520T0Z"
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb cdrom:[Debian 12]/ bookworm main\n"
        "deb [arch=amd64] http://ftp.de.debian.org/debian/ bookworm main\n")
    assert host_mirror(str(apt)) == "http://ftp.de.debian.org/debian"
    assert host_mirror(str(tmp_path / "nothing")) is None


def test_rewrite_layer_on_a_crafted_tar() -> None:
    """What mmdebstrap's tar looks like, in small: ./-prefixed names, /dev first with
    device nodes, the host's hostname and resolv.conf, a hard link."""
    src = io.BytesIO()
    with tarfile.open(fileobj=src, mode="w", format=tarfile.PAX_FORMAT) as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
                link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.linkname, ti.mtime = kind, len(data), link, 1234567
            ti.uname, ti.uid = "root", 0
            tf.addfile(ti, io.BytesIO(data) if data else None)
        add("./dev/", tarfile.DIRTYPE)
        add("./dev/null", tarfile.CHRTYPE)
        add("./", tarfile.DIRTYPE)
        add("./bin", tarfile.SYMTYPE, link="usr/bin")
        add("./etc/", tarfile.DIRTYPE)
        add("./etc/hostname", data=b"buildhost\n")
        add("./etc/os-release", data=b"ID=debian\n")
        add("./etc/resolv.conf", data=b"nameserver 10.0.0.1\n")
        add("./usr/", tarfile.DIRTYPE)
        add("./usr/bin/perl", data=b"#!perl")
        add("./usr/bin/perl5", tarfile.LNKTYPE, link="./usr/bin/perl")
        add("./var/lib/apt/lists/deb.debian.org_dists_bookworm_Release", data=b"x")
        add("./var/lib/apt/lists/lock")
    src.seek(0)
    out = io.BytesIO()
    assert rewrite_layer(src, out, 42) == 8
    out.seek(0)
    with tarfile.open(fileobj=out, mode="r:") as tf:
        got = [(m.name, m.mtime, m.uname, m.linkname) for m in tf]
    assert got == [("bin", 42, "", "usr/bin"), ("dev", 42, "", ""), ("etc", 42, "", ""),
                   ("etc/os-release", 42, "", ""), ("usr", 42, "", ""),
                   ("usr/bin/perl", 42, "", ""), ("usr/bin/perl5", 42, "", "usr/bin/perl"),
                   ("var/lib/apt/lists/lock", 42, "", "")]
