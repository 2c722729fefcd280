"""Security properties of ketch-runtime, each shown by attempting the attack."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.runtime_helpers import BINARY, Ctl, edit_config, mounts_of_host


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _host_executables() -> list[str]:
    return [os.path.realpath(sys.executable), os.path.realpath(BINARY)]


def test_proc_self_exe_binary_cannot_reach_host_interpreter(
        ctl: Ctl, make_bundle: Callable[..., str], cid: str) -> None:
    """CVE-2019-5736: a program that is '#!/proc/self/exe' must not run (or get) the host's
    interpreter. Both the container's main process and an exec'd process try it, while a
    second process in the container keeps trying to open every /proc/*/exe for writing."""
    attacker = (
        "i=0; while [ $i -lt 400 ]; do for e in /proc/[0-9]*/exe; do "
        "if echo pwned 2>/dev/null >> $e; then echo WROTE $e; fi; "
        "if readlink $e 2>/dev/null | grep -q python; then echo SAW $e; fi; done; "
        "i=$((i+1)); done; echo attacker-done")
    b = make_bundle(["/bin/sh", "-c", "sleep 1000"])
    rootfs = Path(b) / "rootfs"
    evil = rootfs / "evil"
    evil.write_text("#!/proc/self/exe\n")
    evil.chmod(0o755)
    before = {p: _digest(p) for p in _host_executables()}
    ctl("run", "-d", "--bundle", b, cid)
    ctl("exec", "-d", "--pid-file", str(Path(b) / "attacker.pid"), cid, "/bin/sh", "-c",
        attacker + " > /tmp/attack.log")
    results = [ctl("exec", cid, "/evil", check=False) for _ in range(15)]
    for r in results:
        # the sealed trampoline ran instead of any host binary, and refused
        assert r.returncode == 126, (r.returncode, r.stderr)
        assert "ketch-runtime: exec failed" in r.stderr
    log = ""
    for _ in range(300):
        log = (rootfs / "tmp" / "attack.log").read_text() if (rootfs / "tmp" /
                                                              "attack.log").exists() else ""
        if "attacker-done" in log:
            break
        import time

        time.sleep(0.1)
    assert "attacker-done" in log
    assert "WROTE" not in log and "SAW" not in log, log
    assert {p: _digest(p) for p in _host_executables()} == before


def test_waiting_init_is_not_dumpable(ctl: Ctl, make_bundle: Callable[..., str],
                                      cid: str) -> None:
    """Until start, the container's pid 1 is ketch's (host) interpreter; container root must not
    be able to open or even read its /proc/1/exe."""
    b = make_bundle(["/bin/true"])
    ctl("create", "--bundle", b, cid)
    p = ctl("exec", cid, "/bin/sh", "-c",
            "readlink /proc/1/exe || echo denied-link; head -c 4 /proc/1/exe >/dev/null "
            "|| echo denied-read", check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["denied-link", "denied-read"]


def test_symlinked_mount_destination_stays_in_rootfs(ctl: Ctl, make_bundle: Callable[..., str],
                                                     cid: str, tmp_path: Path) -> None:
    host_dir = tmp_path / "host-target"
    host_dir.mkdir()
    b = make_bundle(["/bin/sh", "-c", f"ls -d {host_dir}/x {host_dir}/y {host_dir}/z && "
                     "grep -c ' tmpfs ' /proc/mounts"])
    rootfs = Path(b) / "rootfs"
    os.symlink(str(host_dir), rootfs / "abs-link")  # absolute: points at the host dir
    os.symlink("../../../../../../../../" + str(host_dir).lstrip("/"), rootfs / "rel-link")
    (rootfs / "dir").mkdir()
    cfg = edit_config(b)
    mounts = cfg["mounts"] + [
        {"destination": "/abs-link/x", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/rel-link/y", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dir/../../../.." + str(host_dir) + "/z", "type": "tmpfs",
         "source": "tmpfs"},
    ]
    edit_config(b, mounts=mounts)
    before = mounts_of_host()
    p = ctl("run", "--bundle", b, cid)
    # inside, the paths exist (resolved within the rootfs) ...
    assert p.stdout.split()[:3] == [f"{host_dir}/x", f"{host_dir}/y", f"{host_dir}/z"]
    # ... but the host's directory never got anything, nor did the host mount table
    assert list(host_dir.iterdir()) == []
    assert (rootfs / str(host_dir).lstrip("/") / "x").is_dir()
    assert mounts_of_host() == before


def test_existing_destination_through_symlink_resolves_in_rootfs(
        ctl: Ctl, make_bundle: Callable[..., str], cid: str, tmp_path: Path) -> None:
    """Targets that exist are resolved by the kernel (openat2 RESOLVE_IN_ROOT): an
    absolute symlink and ``..`` still land inside the rootfs, never on the host's twin."""
    host_dir = tmp_path / "twin"
    (host_dir / "w").mkdir(parents=True)
    b = make_bundle(["/bin/sh", "-c", f"grep -c ' {host_dir}/w ' /proc/mounts; "
                     "grep -c ' /inner ' /proc/mounts"])
    rootfs = Path(b) / "rootfs"
    (rootfs / str(host_dir).lstrip("/") / "w").mkdir(parents=True)  # the rootfs's twin
    (rootfs / "inner").mkdir()
    os.symlink(str(host_dir), rootfs / "abs-link")
    os.symlink("../../../../../../inner", rootfs / "etc" / "up-link")
    cfg = edit_config(b)
    edit_config(b, mounts=cfg["mounts"] + [
        {"destination": "/abs-link/w", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/etc/up-link", "type": "tmpfs", "source": "tmpfs"},
    ])
    before = mounts_of_host()
    p = ctl("run", "--bundle", b, cid)
    assert p.stdout.split() == ["1", "1"]
    assert mounts_of_host() == before


def test_dotdot_bind_source_is_the_bundle_and_destination_clamped(
        ctl: Ctl, make_bundle: Callable[..., str], cid: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    b = make_bundle(["/bin/sh", "-c", "ls /etc/../../../../mnt-here"])
    (Path(b) / "data").mkdir()
    (Path(b) / "data" / "file").write_text("hi")
    cfg = edit_config(b)
    edit_config(b, mounts=cfg["mounts"] + [
        {"destination": "../../../../../mnt-here", "type": "bind", "source": "data",
         "options": ["rbind", "ro"]}])
    p = ctl("run", "--bundle", b, cid)
    assert p.stdout.split() == ["file"]
    assert (Path(b) / "rootfs" / "mnt-here").is_dir()
    assert not Path("/mnt-here").exists()


def test_masked_and_readonly_paths_protect(ctl: Ctl, make_bundle: Callable[..., str],
                                           cid: str) -> None:
    script = ("cat /proc/keys | wc -c; ls /sys/firmware 2>/dev/null | wc -l; "
              "{ echo h > /proc/sys/kernel/hostname; } 2>&1; "
              "grep -E ' /proc/(sys|bus|fs|irq) ' /proc/mounts | grep -c ' ro,'")
    b = make_bundle(["/bin/sh", "-c", script])
    cfg = edit_config(b)
    linux = cfg["linux"]
    assert {"/proc/keys", "/sys/firmware"} <= set(linux["maskedPaths"])
    # on the host these are readable: the mask is what hides them
    assert Path("/proc/keys").stat() and any(Path("/sys/firmware").iterdir())
    out = ctl("run", "--bundle", b, cid).stdout.splitlines()
    assert out[0] == "0" and out[1] == "0"
    assert "Read-only file system" in out[2]
    present = [p for p in ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq")
               if p in linux["readonlyPaths"] and Path(p).exists()]
    assert int(out[3]) == len(present) > 0
