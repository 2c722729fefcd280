"""Networking through the stock docker CLI and docker-py: bridge networks, the embedded DNS,
published ports, isolation, connect/disconnect. Each ketchd here runs in its own throwaway
network namespace (the conftest's "host"), so its bridges and nft table stay there."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compat.conftest import (
    Ketchd,
    in_netns,
    seed_busybox,
    start_ketchd,
    stop_process,
)

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def _fails(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert r.returncode != 0, r.stdout
    for w in words:
        assert w in r.stderr, r.stderr
    return r.stderr


def _host(d: Ketchd, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
    """A command on the daemon's "host" (its network namespace)."""
    return subprocess.run(in_netns(d.root, list(argv)), capture_output=True, text=True,
                          timeout=timeout, check=False)


def _until(fn: object, seconds: float = 5) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if fn():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def kd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ketchd]:
    root = tmp_path_factory.mktemp("ketchd-net")
    seed_busybox(root)
    d = start_ketchd(root)
    try:
        yield d
    finally:
        ids = d.docker("ps", "-aq").stdout.split()
        if ids:
            d.docker("rm", "-f", *ids)
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)


def test_predefined_networks_and_default_bridge(kd: Ketchd) -> None:
    names = _ok(kd.docker("network", "ls", "--format", "{{.Name}} {{.Driver}}")).split("\n")
    assert {"bridge bridge", "host host", "none null"} <= set(names)
    info = json.loads(_ok(kd.docker("network", "inspect", "bridge")))[0]
    subnet = info["IPAM"]["Config"][0]["Subnet"]
    assert info["Options"]["com.docker.network.bridge.name"] == "ketch0"
    out = _ok(kd.docker("run", "--rm", "busybox", "sh", "-c",
                        "ip -4 -o addr show eth0; ip route; cat /etc/hosts"))
    addr = out.split("inet ")[1].split()[0]
    import ipaddress

    assert ipaddress.ip_interface(addr).network == ipaddress.ip_network(subnet)
    assert f"default via {info['IPAM']['Config'][0]['Gateway']}" in out
    assert addr.split("/")[0] in out.split("ip6-allrouters")[1]  # /etc/hosts names it
    # the bridge exists on the daemon's host, with the gateway
    link = json.loads(_ok(_host(kd, "ip", "-j", "addr", "show", "ketch0")))[0]
    assert any(a["local"] == info["IPAM"]["Config"][0]["Gateway"]
               for a in link["addr_info"])
    _fails(kd.docker("network", "rm", "bridge"), "pre-defined network")


def test_network_create_inspect_ls_rm_prune(kd: Ketchd) -> None:
    nid = _ok(kd.docker("network", "create", "--subnet", "10.61.0.0/24", "--gateway",
                        "10.61.0.254", "--ip-range", "10.61.0.128/25", "--label", "team=a",
                        "-o", "com.docker.network.driver.mtu=1400", "-o",
                        "com.docker.network.bridge.name=kbr61", "n61")).strip()
    try:
        info = json.loads(_ok(kd.docker("network", "inspect", "n61")))[0]
        assert info["Id"] == nid and info["Driver"] == "bridge" and info["Labels"] == {
            "team": "a"}
        assert info["IPAM"]["Config"] == [{"Subnet": "10.61.0.0/24", "Gateway": "10.61.0.254",
                                           "IPRange": "10.61.0.128/25"}]
        link = json.loads(_ok(_host(kd, "ip", "-j", "link", "show", "kbr61")))[0]
        assert link["mtu"] == 1400
        out = _ok(kd.docker("run", "--rm", "--network", "n61", "busybox", "ip", "-4", "-o",
                            "addr", "show", "eth0"))
        assert "inet 10.61.0.128/24" in out or "inet 10.61.0.129/24" in out  # in the range
        assert _ok(kd.docker("network", "ls", "-q", "--filter", "label=team=a")).split() == [
            nid[:12]]
        assert _ok(kd.docker("network", "ls", "--filter", "name=n61", "--format",
                             "{{.Name}}")).split() == ["n61"]
        # bad input: a 4xx that says which, and nothing made
        _fails(kd.docker("network", "create", "n61"), "already exists")
        _fails(kd.docker("network", "create", "--subnet", "10.61.0.0/16", "x1"), "overlaps")
        _fails(kd.docker("network", "create", "--subnet", "10.62.0.0/24", "--gateway",
                         "10.63.0.1", "x2"), "10.63.0.1")
        _fails(kd.docker("network", "create", "-d", "nosuch", "x3"), "nosuch")
        _fails(kd.docker("network", "inspect", "nosuchnet"), "nosuchnet")
        names = _ok(kd.docker("network", "ls", "--format", "{{.Name}}")).split()
        assert not {"x1", "x2", "x3"} & set(names)
        # in use: refused while a container is on it
        cid = _ok(kd.docker("run", "-d", "--network", "n61", "busybox", "sleep", "60")).strip()
        _fails(kd.docker("network", "rm", "n61"), "active endpoints")
        _ok(kd.docker("rm", "-f", cid))
    finally:
        kd.docker("network", "rm", "n61")
    assert _host(kd, "ip", "link", "show", "kbr61").returncode != 0  # the bridge went
    _ok(kd.docker("network", "create", "--label", "tmp=1", "n62"))
    pruned = _ok(kd.docker("network", "prune", "-f", "--filter", "label=tmp=1"))
    assert "n62" in pruned
    assert "n62" not in _ok(kd.docker("network", "ls", "--format", "{{.Name}}")).split()


def test_names_resolve_and_reach_on_a_user_network(kd: Ketchd) -> None:
    _ok(kd.docker("network", "create", "dnsnet"))
    try:
        web = _ok(kd.docker("run", "-d", "--name", "web1", "--network", "dnsnet",
                            "--network-alias", "www", "busybox", "httpd", "-f", "-p", "80",
                            "-h", "/etc")).strip()
        script = ("cat /etc/resolv.conf; for n in web1 www " + web[:12] + "; do "
                  "ok=; for i in 1 2 3 4 5 6 7 8 9 10; do "
                  "timeout 3 wget -qO- http://$n/hostname && ok=1 && break; sleep 0.2; done; "
                  "[ -n \"$ok\" ] || echo FAIL $n; done; "
                  "nslookup web1 127.0.0.11 >/dev/null && echo RESOLVED; "
                  "nslookup nosuch.invalid 127.0.0.11 >/dev/null 2>&1 || echo NXDOMAIN")
        out = _ok(kd.docker("run", "--rm", "--network", "dnsnet", "busybox", "sh", "-c",
                            script))
        assert "nameserver 127.0.0.11" in out
        assert out.count(web[:12]) >= 3 and "FAIL" not in out  # by name, alias, short id
        assert "RESOLVED" in out and "NXDOMAIN" in out
        # the default bridge has no embedded DNS: names of others do not resolve there
        out = _ok(kd.docker("run", "--rm", "busybox", "sh", "-c", "cat /etc/resolv.conf; "
                            "timeout 3 wget -qO- http://web1/ || echo NONAME"))
        assert "127.0.0.11" not in out and "NONAME" in out
    finally:
        kd.docker("rm", "-f", "web1")
        kd.docker("network", "rm", "dnsnet")


def test_isolation_between_networks_and_internal(kd: Ketchd) -> None:
    for n in ("iso-a", "iso-b"):
        _ok(kd.docker("network", "create", n))
    _ok(kd.docker("network", "create", "--internal", "--subnet", "10.64.0.0/24", "iso-int"))
    try:
        b = _ok(kd.docker("run", "-d", "--name", "isob", "--network", "iso-b", "busybox",
                          "httpd", "-f", "-p", "80", "-h", "/etc")).strip()
        ip_b = json.loads(_ok(kd.docker("inspect", b)))[0]["NetworkSettings"]["Networks"][
            "iso-b"]["IPAddress"]
        gw_b = json.loads(_ok(kd.docker("network", "inspect", "iso-b")))[0]["IPAM"][
            "Config"][0]["Gateway"]
        # same network: reachable; another network: not
        assert "isob" not in _ok(kd.docker(
            "run", "--rm", "--network", "iso-a", "busybox", "sh", "-c",
            f"timeout 3 wget -qO- http://{ip_b}/hostname || echo BLOCKED"))
        assert b[:12] in _ok(kd.docker(
            "run", "--rm", "--network", "iso-b", "busybox", "sh", "-c",
            f"for i in 1 2 3 4 5; do timeout 3 wget -qO- http://{ip_b}/hostname && break; "
            "sleep 0.2; done"))
        # internal: no default route, and nothing outside its subnet answers
        out = _ok(kd.docker("run", "--rm", "--network", "iso-int", "busybox", "sh", "-c",
                            f"ip route; ping -c1 -W1 {gw_b} >/dev/null 2>&1 || echo NOWAY"))
        assert "default" not in out and "NOWAY" in out
    finally:
        kd.docker("rm", "-f", "isob")
        for n in ("iso-a", "iso-b", "iso-int"):
            kd.docker("network", "rm", n)


def test_published_ports(kd: Ketchd) -> None:
    cid = _ok(kd.docker("run", "-d", "-p", "8081:80", "-p", "127.0.0.1:8082:80/tcp", "-P",
                        "--expose", "81", "busybox", "httpd", "-f", "-p", "80", "-h",
                        "/etc")).strip()
    try:
        ports = _ok(kd.docker("port", cid))
        assert "80/tcp -> 0.0.0.0:8081" in ports and "80/tcp -> 127.0.0.1:8082" in ports
        assert "81/tcp -> 0.0.0.0:" in ports  # -P: a random host port for EXPOSE 81
        for url in ("http://127.0.0.1:8081/hostname", "http://127.0.0.1:8082/hostname"):
            assert _until(lambda u=url: cid[:12] in _host(
                kd, "timeout", "3", BUSYBOX, "wget", "-qO-", u).stdout), url
        # from another container, through the host's address on the default bridge
        gw = json.loads(_ok(kd.docker("network", "inspect", "bridge")))[0]["IPAM"][
            "Config"][0]["Gateway"]
        assert cid[:12] in _ok(kd.docker("run", "--rm", "busybox", "timeout", "3", "wget",
                                         "-qO-", f"http://{gw}:8081/hostname"))
        ps = _ok(kd.docker("ps", "--format", "{{.Ports}}", "--filter", f"id={cid}"))
        assert "0.0.0.0:8081->80/tcp" in ps
        # the same host port again: a clear error, and no container left running
        err = _fails(kd.docker("run", "-d", "--name", "clash", "-p", "8081:80", "busybox",
                               "sleep", "30"), "8081")
        assert "already allocated" in err or "in use" in err
        assert "clash" not in _ok(kd.docker("ps", "--format", "{{.Names}}"))
    finally:
        kd.docker("rm", "-f", cid, "clash")
    # released: the port is free for the next container
    c2 = _ok(kd.docker("run", "-d", "-p", "8081:80", "busybox", "sleep", "30")).strip()
    kd.docker("rm", "-f", c2)


def test_connect_disconnect_static_ip_and_etc_files(kd: Ketchd) -> None:
    _ok(kd.docker("network", "create", "--subnet", "10.65.0.0/24", "cnet"))
    try:
        cid = _ok(kd.docker("run", "-d", "--name", "cc", "--hostname", "box", "--dns",
                            "9.9.9.9", "--dns-search", "example.org", "--add-host",
                            "db:10.1.2.3", "busybox", "sleep", "60")).strip()
        out = _ok(kd.docker("exec", cid, "sh", "-c", "cat /etc/hosts /etc/resolv.conf; "
                            "hostname"))
        assert "10.1.2.3\tdb" in out and "nameserver 9.9.9.9" in out
        assert "search example.org" in out and out.strip().endswith("box")
        _ok(kd.docker("network", "connect", "--ip", "10.65.0.9", "--alias", "svc", "cnet",
                      cid))
        out = _ok(kd.docker("exec", cid, "ip", "-4", "-o", "addr"))
        assert "inet 10.65.0.9/24" in out and "eth1" in out
        nets = json.loads(_ok(kd.docker("inspect", cid)))[0]["NetworkSettings"]["Networks"]
        assert nets["cnet"]["IPAddress"] == "10.65.0.9" and "svc" in nets["cnet"]["Aliases"]
        assert cid in json.loads(_ok(kd.docker("network", "inspect", "cnet")))[0]["Containers"]
        # the alias resolves for others on cnet
        assert "10.65.0.9" in _ok(kd.docker("run", "--rm", "--network", "cnet", "busybox",
                                            "nslookup", "svc", "127.0.0.11"))
        # a taken address is refused with a clear error
        _fails(kd.docker("run", "--rm", "--network", "cnet", "--ip", "10.65.0.9", "busybox",
                         "true"), "10.65.0.9")
        _ok(kd.docker("network", "disconnect", "cnet", cid))
        assert "10.65.0.9" not in _ok(kd.docker("exec", cid, "ip", "-4", "-o", "addr"))
        # released: the address can be taken again
        _ok(kd.docker("run", "--rm", "--network", "cnet", "--ip", "10.65.0.9", "busybox",
                      "true"))
    finally:
        kd.docker("rm", "-f", "cc")
        kd.docker("network", "rm", "cnet")


def test_container_network_mode_shares_the_namespace(kd: Ketchd) -> None:
    a = _ok(kd.docker("run", "-d", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")).strip()
    try:
        out = _ok(kd.docker("run", "--rm", "--network", f"container:{a}", "busybox", "sh",
                            "-c", "for i in 1 2 3 4 5; do timeout 3 wget -qO- "
                            "http://127.0.0.1/hostname && break; sleep 0.2; done"))
        assert a[:12] in out
    finally:
        kd.docker("rm", "-f", a)


def test_nothing_left_after_containers_go(kd: Ketchd) -> None:
    before = {x["ifname"] for x in json.loads(_ok(_host(kd, "ip", "-j", "link")))}
    for _ in range(3):
        _ok(kd.docker("run", "--rm", "-p", "8090:80", "busybox", "true"))
    cid = _ok(kd.docker("run", "-d", "busybox", "sleep", "60")).strip()
    kd.docker("rm", "-f", cid)
    after = {x["ifname"] for x in json.loads(_ok(_host(kd, "ip", "-j", "link")))}
    assert after == before
    assert not list((kd.root / "exec" / "netns").glob("*"))
    rules = _ok(_host(kd, "nft", "list", "table", "inet", "ketch"))
    assert "8090" not in rules


def test_networks_and_addresses_survive_a_restart(tmp_path_factory: pytest.TempPathFactory
                                                  ) -> None:
    root = tmp_path_factory.mktemp("ketchd-net-restart")
    seed_busybox(root)
    d = start_ketchd(root, "--live-restore")
    try:
        nid = _ok(d.docker("network", "create", "--subnet", "10.66.0.0/24", "keep")).strip()
        cid = _ok(d.docker("run", "-d", "--network", "keep", "-p", "8095:80", "busybox",
                           "httpd", "-f", "-p", "80", "-h", "/etc")).strip()
        ip = json.loads(_ok(d.docker("inspect", cid)))[0]["NetworkSettings"]["Networks"][
            "keep"]["IPAddress"]
        stop_process(d.proc)
        d = start_ketchd(root, "--live-restore")
        info = json.loads(_ok(d.docker("network", "inspect", "keep")))[0]
        assert info["Id"] == nid and cid in info["Containers"]
        assert json.loads(_ok(d.docker("inspect", cid)))[0]["NetworkSettings"]["Networks"][
            "keep"]["IPAddress"] == ip
        assert _until(lambda: cid[:12] in _host(d, "timeout", "3", BUSYBOX, "wget", "-qO-",
                                                "http://127.0.0.1:8095/hostname").stdout)
        # the next container gets another address, and the name resolves
        out = _ok(d.docker("run", "--rm", "--network", "keep", "busybox", "sh", "-c",
                           f"ip -4 -o addr show eth0; nslookup {cid[:12]} 127.0.0.11"))
        assert f"inet {ip}/" not in out and ip in out
    finally:
        ids = d.docker("ps", "-aq").stdout.split()
        if ids:
            d.docker("rm", "-f", *ids)
        d.docker("network", "rm", "keep")
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)


def test_docker_py_networks(kd: Ketchd) -> None:
    docker = pytest.importorskip("docker")
    client = docker.DockerClient(base_url=kd.url, version="auto")
    net = client.networks.create("pynet", driver="bridge", labels={"by": "docker-py"})
    try:
        c = client.containers.run("busybox", ["sleep", "60"], detach=True, network="pynet")
        try:
            net.reload()
            assert c.id in net.attrs["Containers"]
            c.reload()
            assert c.attrs["NetworkSettings"]["Networks"]["pynet"]["IPAddress"]
            net.disconnect(c)
            net.reload()
            assert c.id not in net.attrs["Containers"]
            assert [n.name for n in client.networks.list(names=["pynet"])] == ["pynet"]
        finally:
            c.remove(force=True)
    finally:
        net.remove()
    assert not client.networks.list(names=["pynet"])


def test_network_none_has_loopback_only(kd: Ketchd) -> None:
    out = _ok(kd.docker("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link"))
    assert "eth0" not in out and "lo" in out


def test_udp_and_port_ranges(kd: Ketchd) -> None:
    """A range of TCP ports answers; a UDP mapping is shown and programmed (datagrams
    through one: test_udp_published_port_carries_datagrams)."""
    cid = _ok(kd.docker("run", "-d", "-p", "9053:53/udp", "-p", "9100-9101:100-101",
                        "busybox", "sh", "-c",
                        "httpd -f -p 100 -h /etc & httpd -f -p 101 -h /etc")).strip()
    try:
        ports = _ok(kd.docker("port", cid))
        assert "53/udp -> 0.0.0.0:9053" in ports
        assert "100/tcp -> 0.0.0.0:9100" in ports and "101/tcp -> 0.0.0.0:9101" in ports
        for port in (9100, 9101):
            assert _until(lambda p=port: cid[:12] in _host(
                kd, "timeout", "3", BUSYBOX, "wget", "-qO-",
                f"http://127.0.0.1:{p}/hostname").stdout), port
        rules = _ok(_host(kd, "nft", "list", "map", "inet", "ketch", "dnat4_any"))
        assert "udp . 9053" in rules
    finally:
        kd.docker("rm", "-f", cid)
    assert "9053" not in _ok(_host(kd, "nft", "list", "map", "inet", "ketch", "dnat4_any"))


_UDP_ECHO = r"""
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a)) return 1;
    for (;;) {
        char b[1500];
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(s, b + 5, sizeof b - 5, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) continue;
        memcpy(b, "pong:", 5);
        sendto(s, b, (size_t)n + 5, 0, (struct sockaddr *)&peer, len);
    }
}
"""

_UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(20):
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(100).decode())
        break
    except TimeoutError:
        pass
"""


def test_udp_published_port_carries_datagrams(kd: Ketchd, tmp_path: Path) -> None:
    """Datagrams to a published UDP port reach the container and its answers come back,
    through the host's own addresses (127.0.0.1 included)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a UDP echo server (busybox has none)")
    (tmp_path / "udpecho.c").write_text(_UDP_ECHO)
    built = subprocess.run([cc, "-static", "-O2", "-o", str(tmp_path / "udpecho"),
                            str(tmp_path / "udpecho.c")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot link a static program here: {built.stderr.strip()[-200:]}")
    with tarfile.open(tmp_path / "udpecho.tar", "w") as tar:
        tar.add(tmp_path / "udpecho", "udpecho")
    _ok(kd.docker("import", str(tmp_path / "udpecho.tar"), "udpecho:latest"))
    cid = _ok(kd.docker("run", "-d", "-p", "9054:53/udp", "udpecho", "/udpecho", "53")).strip()
    try:
        gw = json.loads(_ok(kd.docker("network", "inspect", "bridge")))[0]["IPAM"]["Config"][
            0]["Gateway"]
        for addr in ("127.0.0.1", gw):
            out = _host(kd, sys.executable, "-c", _UDP_ASK, addr, "9054").stdout
            assert out.strip() == "pong:ping", (addr, out)
    finally:
        kd.docker("rm", "-f", cid)
        kd.docker("rmi", "udpecho:latest")


def test_a_killed_daemon_leaves_nothing_after_restart(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL with a published, networked container running (no live-restore): the
    restarted daemon finds it exited and releases its sandbox, veth, address and port."""
    import os
    import signal as sig

    root = tmp_path_factory.mktemp("ketchd-net-crash")
    seed_busybox(root)
    d = start_ketchd(root)
    try:
        _ok(d.docker("network", "create", "--subnet", "10.67.0.0/24", "crashnet"))
        links_before = {x["ifname"] for x in json.loads(_ok(_host(d, "ip", "-j", "link")))}
        cid = _ok(d.docker("run", "-d", "--network", "crashnet", "--ip", "10.67.0.7", "-p",
                           "8097:80", "busybox", "sleep", "300")).strip()
        init = json.loads(_ok(d.docker("inspect", cid)))[0]["State"]["Pid"]
        os.kill(d.proc.pid, sig.SIGKILL)
        d.proc.wait()
        os.kill(init, sig.SIGKILL)  # the container dies while no daemon watches
        d = start_ketchd(root)
        assert _until(lambda: json.loads(_ok(d.docker("inspect", cid)))[0]["State"][
            "Status"] == "exited", 10)
        assert not list((root / "exec" / "netns").glob("*"))
        assert _until(lambda: {x["ifname"] for x in json.loads(
            _ok(_host(d, "ip", "-j", "link")))} == links_before, 10)
        assert "8097" not in _ok(_host(d, "nft", "list", "table", "inet", "ketch"))
        # the address and the port are free again
        _ok(d.docker("run", "--rm", "--network", "crashnet", "--ip", "10.67.0.7", "-p",
                     "8097:80", "busybox", "true"))
    finally:
        ids = d.docker("ps", "-aq").stdout.split()
        if ids:
            d.docker("rm", "-f", *ids)
        d.docker("network", "rm", "crashnet")
        stop_process(d.proc)
        shutil.rmtree(root, ignore_errors=True)
