"""The ketch CLI without an engine: tables, sizes, times, templates, run flags → create body,
and a few verbs end to end against a fake EngineClient."""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from pathlib import Path
from typing import Any, cast

import pytest

from ketch.client.cli import main, parser
from ketch.client.cli.base import UsageError, go_duration, parse_filters, parse_timestamp
from ketch.client.cli.containers import container_rows
from ketch.client.cli.cp import split_cp_arg
from ketch.client.cli.format import (
    Template,
    ellipsis,
    go_value,
    human_duration,
    human_size,
    render_rows,
    since,
    tabulate,
)
from ketch.client.cli.images import familiar, image_rows, split_ref
from ketch.client.cli.run import start_status
from ketch.client.cli.runopts import build_create, parse_mount, parse_ram
from ketch.client.cli.system import binary_size, df_table, event_line
from ketch.client.cli.term import DetachKeys
from ketch.client.engine import EngineClient
from ketch.cmd.ketch import split_host
from ketch.errors import Conflict, NotFound

# -- tables, sizes, times ------------------------------------------------------------


def test_tabulate_like_docker_tabwriter() -> None:
    rows = [["CONTAINER ID", "IMAGE", "NAMES"], ["0123456789ab", "busybox", "web"],
            ["ba9876543210", "a-much-longer-image-name", "db"]]
    assert tabulate(rows) == (
        "CONTAINER ID   IMAGE                      NAMES\n"
        "0123456789ab   busybox                    web\n"
        "ba9876543210   a-much-longer-image-name   db\n")
    # narrow columns are still 10 wide; the last cell is never padded
    assert tabulate([["A", "B"], ["", "x"]]) == "A         B\n          x\n"
    assert tabulate([["A", "B"]], min_width=20) == "A" + " " * 19 + "B\n"


@pytest.mark.parametrize("size,text", [
    (0, "0B"), (999, "999B"), (1000, "1kB"), (8192, "8.19kB"), (2170880, "2.17MB"),
    (4260000, "4.26MB"), (1_500_000_000, "1.5GB"), (999_999, "1e+03kB"), (10**24, "1YB"),
])
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_human_size_other_precisions() -> None:
    assert human_size(2170880, 4) == "2.171MB"
    assert binary_size(25_277_000_000) == "23.54GiB"
    assert binary_size(512) == "512B"


@pytest.mark.parametrize("seconds,text", [
    (0, "Less than a second"), (0.9, "Less than a second"), (1, "1 second"),
    (59, "59 seconds"), (60, "About a minute"), (119, "About a minute"), (120, "2 minutes"),
    (3599, "59 minutes"), (3600, "About an hour"), (5399, "About an hour"),
    (5400, "2 hours"), (9000, "3 hours"), (47 * 3600, "47 hours"), (48 * 3600, "2 days"),
    (13 * 86400, "13 days"), (14 * 86400, "2 weeks"), (59 * 86400, "8 weeks"),
    (60 * 86400, "2 months"), (729 * 86400, "24 months"), (730 * 86400, "2 years"),
])
def test_human_duration(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_since_and_ellipsis() -> None:
    assert since(1000, now=1065) == "About a minute ago"
    assert ellipsis("sh -c 'sleep 1000'", 20) == "sh -c 'sleep 1000'"
    assert ellipsis("sh -c 'while true; do sleep 1; done'", 20) == "sh -c 'while true; …"
    assert len(ellipsis("x" * 30, 20)) == 20


# -- templates ---------------------------------------------------------------------------

OBJ = {"Id": "abc", "State": {"Status": "running", "Pid": 42, "Running": True},
       "Config": {"Env": ["A=1", "B=<2>"], "Labels": {"b": "2", "a": "1"}}, "Gone": None}


@pytest.mark.parametrize("fmt,text", [
    ("{{.Id}}", "abc"),
    ("{{ .State.Status }} pid={{.State.Pid}}", "running pid=42"),
    ("{{.State.Running}}", "true"),
    ("{{.Config.Env}}", "[A=1 B=<2>]"),
    ("{{.Config.Labels}}", "map[a:1 b:2]"),
    ("{{json .Config.Env}}", '["A=1","B=\\u003c2\\u003e"]'),
    ("{{json .State}}", '{"Status":"running","Pid":42,"Running":true}'),
    ("{{.Missing}}", "<no value>"),
    ("{{.Gone}}", "<nil>"),
    ("{{.Id}}\\t{{.State.Pid}}\\n", "abc\t42\n"),
])
def test_template(fmt: str, text: str) -> None:
    assert Template(fmt).render(OBJ) == text


def test_template_json_dot_and_strict_fields() -> None:
    assert json.loads(Template("{{json .}}").render(OBJ)) == OBJ
    with pytest.raises(UsageError, match="can't evaluate field Nope"):
        Template("{{.Nope}}").render({"ID": "x"}, strict=True)
    for bad in ("{{range .Names}}{{.}}{{end}}", "{{upper .ID}}", "{{.ID | printf}}"):
        with pytest.raises(UsageError, match=re.escape("only {{.Field}} and {{json .}}")):
            Template(bad)


def test_go_value() -> None:
    assert go_value(3.0) == "3" and go_value(False) == "false" and go_value([]) == "[]"
    assert go_value({"k": [1, {"x": None}]}) == "map[k:[1 map[x:<nil>]]]"


def test_render_rows_formats() -> None:
    rows = [{"ID": "abc", "Names": "web", "Digest": "<none>"},
            {"ID": "defdefdefdef", "Names": "db", "Digest": "<none>"}]
    headers = {"ID": "CONTAINER ID", "Names": "NAMES", "Digest": "DIGEST"}
    default = "table {{.ID}}\t{{.Names}}"

    def out(fmt: str | None) -> str:
        buf = io.StringIO()
        render_rows(buf, rows, fmt, default=default, headers=headers)
        return buf.getvalue()

    assert out(None) == ("CONTAINER ID   NAMES\nabc            web\n"
                         "defdefdefdef   db\n")
    assert out("table {{.Names}}\\t{{.ID}}") == ("NAMES     CONTAINER ID\nweb       abc\n"
                                                  "db        defdefdefdef\n")
    assert out("{{.Names}}") == "web\ndb\n"
    assert out("json").splitlines()[0] == \
        '{"Digest":"\\u003cnone\\u003e","ID":"abc","Names":"web"}'
    assert [json.loads(line)["ID"] for line in out("json").splitlines()] == \
        ["abc", "defdefdefdef"]
    with pytest.raises(UsageError):
        out("{{.Nope}}")


# -- rows from API objects -------------------------------------------------------------


def test_container_rows() -> None:
    now = 1_700_000_000.0
    c = {"Id": "0123456789abcdef" * 4, "Names": ["/web", "/other/alias"],
         "Image": "busybox@sha256:" + "1" * 64, "ImageID": "sha256:" + "2" * 64,
         "Command": "sh -c 'while true; do sleep 1; done'", "Created": now - 150,
         "State": "running", "Status": "Up 2 minutes", "Labels": {"b": "2", "a": "1"},
         "Ports": [{"PrivatePort": 80, "PublicPort": 8080, "IP": "0.0.0.0", "Type": "tcp"},
                   {"PrivatePort": 53, "Type": "udp"}],
         "Mounts": [{"Name": "data", "Driver": "local"}], "SizeRw": 8192, "SizeRootFs": 1_050_000}
    row = container_rows([c], now=now)[0]
    assert row["ID"] == "0123456789ab"
    assert row["Names"] == "web"
    assert row["Image"] == "busybox"
    assert row["Command"] == '"sh -c \'while true; …"'
    assert row["RunningFor"] == "2 minutes ago"
    assert row["Ports"] == "0.0.0.0:8080->80/tcp, 53/udp"
    assert row["Labels"] == "a=1,b=2" and row["LocalVolumes"] == "1"
    assert row["Size"] == "8.19kB (virtual 1.05MB)"
    full = container_rows([c], trunc=False, now=now)[0]
    assert full["ID"] == c["Id"] and full["Names"] == "web,other/alias"
    assert full["Command"] == json.dumps(c["Command"])
    assert container_rows([{**c, "Image": "sha256:" + "2" * 64}])[0]["Image"] == "2" * 12


def test_image_rows() -> None:
    img = {"Id": "sha256:" + "6641bf54d40c" + "0" * 52, "Created": 1_000, "Size": 2_170_880,
           "SharedSize": -1, "Containers": -1,
           "RepoTags": ["busybox:latest", "docker.io/library/busybox:1", "localhost:5000/bb:x"],
           "RepoDigests": ["busybox@sha256:" + "a" * 64, "ghost@sha256:" + "b" * 64]}
    rows = image_rows([img], now=1_000 + 86400 * 3)
    assert [(r["Repository"], r["Tag"], r["Digest"]) for r in rows] == [
        ("busybox", "latest", "<none>"), ("busybox", "1", "<none>"),
        ("localhost:5000/bb", "x", "<none>"), ("ghost", "<none>", "")]
    assert rows[0]["ID"] == "6641bf54d40c" and rows[0]["CreatedSince"] == "3 days ago"
    assert rows[0]["Size"] == "2.17MB" and rows[0]["VirtualSize"] == "2.171MB"
    assert rows[0]["SharedSize"] == "N/A" and rows[0]["Containers"] == "N/A"
    with_digests = image_rows([img], digests=True)
    assert with_digests[0]["Digest"] == "sha256:" + "a" * 64
    assert with_digests[-1][("Tag")] == "<none>"
    dangling = image_rows([{"Id": "sha256:" + "f" * 64, "RepoTags": None}], trunc=False)
    assert [(r["Repository"], r["Tag"], r["ID"]) for r in dangling] == [
        ("<none>", "<none>", "sha256:" + "f" * 64)]


def test_references() -> None:
    assert split_ref("busybox") == ("busybox", None)
    assert split_ref("localhost:5000/a/b:v1") == ("localhost:5000/a/b", "v1")
    assert split_ref("localhost:5000/a") == ("localhost:5000/a", None)
    assert familiar("docker.io/library/busybox") == "busybox"
    assert familiar("docker.io/me/app") == "me/app"
    assert familiar("quay.io/x/y") == "quay.io/x/y"


# -- run flags → create body ---------------------------------------------------------


def _run_args(*argv: str) -> argparse.Namespace:
    args, extra = parser().parse_known_args(["run", *argv])
    assert not extra
    return args


def test_run_flags_to_create_body(tmp_path: Path) -> None:
    profile = tmp_path / "seccomp.json"
    profile.write_text('{\n  "defaultAction": "SCMP_ACT_ALLOW"\n}\n')
    env_file = tmp_path / "env"
    env_file.write_text("# comment\n\nFROM_FILE=1\n  PASSED_THROUGH\nB=file\n")
    args = _run_args(
        "-it", "--rm", "--name", "web", "-e", "A=1", "--env", "PASSED_THROUGH",
        "-e", "UNSET_HERE", "--env-file", str(env_file), "-v", "/srv:/data:ro",
        "-v", "./rel:/rel", "-v", "named:/named", "-v", "/anon",
        "--mount", "type=tmpfs,target=/cache,tmpfs-size=64m,tmpfs-mode=1770",
        "--mount", "type=bind,src=/etc,dst=/host-etc,readonly,bind-propagation=rslave",
        "--mount", "source=vol,target=/v,volume-nocopy",
        "--tmpfs", "/run:size=1m", "-w", "/work", "-u", "1000:1000", "--entrypoint", "",
        "--network", "none", "-h", "box", "-l", "a=b", "--label", "flag",
        "-m", "512m", "--cpus", "1.5", "--pids-limit", "100", "--ulimit", "nofile=1024:2048",
        "--ulimit", "core=0", "--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--privileged",
        "--read-only", "--security-opt", f"seccomp={profile}",
        "--security-opt", "no-new-privileges", "--init",
        "--health-cmd", "true", "--health-interval", "1m30s", "--health-timeout", "500ms",
        "--health-retries", "3", "--health-start-period", "2s",
        "--log-driver", "json-file", "--log-opt", "max-size=1m", "--stop-signal", "SIGINT",
        "--stop-timeout", "5", "--runtime", "runc", "--detach-keys", "ctrl-a,x",
        "busybox", "sh", "-c", "echo hi")
    spec = build_create(args, environ={"PASSED_THROUGH": "p"}, cwd="/home/u",
                        console_size=(24, 80))
    body = spec.body
    assert spec.name == "web"
    assert body["Image"] == "busybox" and body["Cmd"] == ["sh", "-c", "echo hi"]
    assert body["Entrypoint"] == [""]
    assert (body["Tty"], body["OpenStdin"], body["StdinOnce"]) == (True, True, True)
    assert (body["AttachStdin"], body["AttachStdout"], body["AttachStderr"]) == \
           (True, True, True)
    assert body["Env"] == ["FROM_FILE=1", "PASSED_THROUGH=p", "B=file", "A=1",
                           "PASSED_THROUGH=p", "UNSET_HERE"]
    assert body["Volumes"] == {"/anon": {}}
    assert (body["WorkingDir"], body["User"], body["Hostname"]) == ("/work", "1000:1000", "box")
    assert body["Labels"] == {"a": "b", "flag": ""}
    assert body["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 90 * 10**9,
                                   "Timeout": 500 * 10**6, "StartPeriod": 2 * 10**9,
                                   "Retries": 3}
    assert (body["StopSignal"], body["StopTimeout"]) == ("SIGINT", 5)
    hc = body["HostConfig"]
    assert hc["Binds"] == ["/srv:/data:ro", "/home/u/rel:/rel", "named:/named"]
    assert hc["Mounts"] == [
        {"Type": "tmpfs", "Target": "/cache",
         "TmpfsOptions": {"SizeBytes": 64 << 20, "Mode": 0o1770}},
        {"Type": "bind", "Source": "/etc", "Target": "/host-etc", "ReadOnly": True,
         "BindOptions": {"Propagation": "rslave"}},
        {"Type": "volume", "Source": "vol", "Target": "/v", "VolumeOptions": {"NoCopy": True}},
    ]
    assert hc["Tmpfs"] == {"/run": "size=1m"}
    assert hc["AutoRemove"] is True and hc["RestartPolicy"] == {"Name": "no"}
    assert hc["NetworkMode"] == "none"
    assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"]) == (512 << 20, 1_500_000_000, 100)
    assert hc["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048},
                             {"Name": "core", "Soft": 0, "Hard": 0}]
    assert (hc["CapAdd"], hc["CapDrop"]) == (["NET_ADMIN"], ["ALL"])
    assert hc["Privileged"] and hc["ReadonlyRootfs"] and hc["Init"]
    assert hc["SecurityOpt"] == ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}',
                                 "no-new-privileges"]
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert hc["Runtime"] == "runc" and hc["ConsoleSize"] == [24, 80]
    assert args.detach_keys == "ctrl-a,x"


def test_run_defaults_and_attach_modes() -> None:
    body = build_create(_run_args("busybox"), environ={}).body
    assert "Cmd" not in body and "Entrypoint" not in body and "Env" not in body
    assert (body["AttachStdin"], body["AttachStdout"], body["AttachStderr"]) == \
           (False, True, True)
    assert body["HostConfig"] == {"RestartPolicy": {"Name": "no"}, "AutoRemove": False}
    detached = build_create(_run_args("-d", "-i", "busybox"), detach=True, environ={}).body
    assert (detached["AttachStdin"], detached["AttachStdout"], detached["StdinOnce"]) == \
           (False, False, False)
    assert detached["OpenStdin"] is True
    only_err = build_create(_run_args("-a", "stderr", "busybox", "ls"), environ={}).body
    assert (only_err["AttachStdout"], only_err["AttachStderr"]) == (False, True)
    restart = build_create(_run_args("--restart", "on-failure:3", "busybox"), environ={}).body
    assert restart["HostConfig"]["RestartPolicy"] == {"Name": "on-failure",
                                                      "MaximumRetryCount": 3}
    no_hc = build_create(_run_args("--no-healthcheck", "busybox"), environ={}).body
    assert no_hc["Healthcheck"] == {"Test": ["NONE"]}


@pytest.mark.parametrize("argv,detach,message", [
    (["-a", "stdout", "busybox"], True, "Conflicting options: -a and -d"),
    (["--rm", "--restart", "always", "busybox"], False, "--restart and --rm"),
    (["--restart", "sometimes", "busybox"], False, "invalid restart policy"),
    (["--restart", "always:3", "busybox"], False, "maximum retry count"),
    (["--no-healthcheck", "--health-cmd", "true", "busybox"], False, "conflicts"),
    (["--health-interval", "10x", "busybox"], False, "invalid duration"),
    (["-m", "lots", "busybox"], False, "invalid size"),
    (["--ulimit", "nofile=2:1", "busybox"], False, "soft limit"),
    (["--mount", "type=nfs,target=/x", "busybox"], False, "invalid mount type"),
    (["--mount", "type=bind,target=/x", "busybox"], False, "source is required"),
    (["--mount", "type=volume,target=/x,tmpfs-size=1m", "busybox"], False, "cannot mix"),
    (["--mount", "src=/a", "busybox"], False, "target is required"),
    (["--mount", "type=bind,src=/a,target=/b,colour=red", "busybox"], False, "unexpected key"),
    (["-v", "relative", "busybox"], False, "invalid volume"),
    (["--tmpfs", "run", "busybox"], False, "absolute"),
    (["--log-opt", "novalue", "busybox"], False, "key=value"),
    (["--env-file", "/nonexistent/env", "busybox"], False, "/nonexistent/env"),
])
def test_run_flag_errors(argv: list[str], detach: bool, message: str) -> None:
    with pytest.raises(UsageError, match=message) as e:
        build_create(_run_args(*argv), detach=detach, environ={})
    assert e.value.status == 125


def test_value_parsers() -> None:
    assert parse_ram("64MiB") == 64 << 20 and parse_ram("1.5g") == 3 << 29
    assert parse_ram("100") == 100 and parse_ram("2 kb") == 2048
    assert parse_mount("type=bind,source=/a,target=/b,ro=false")["ReadOnly"] is False
    assert go_duration("1h2m3.5s") == 3_723_500_000_000
    assert go_duration("0") == 0 and go_duration("-1s") == -10**9
    assert go_duration("10") is None and go_duration("1d") is None
    assert parse_timestamp("1700000000") == "1700000000"
    assert parse_timestamp("10m", now=1_700_000_600.0) == "1700000000.000000000"
    assert parse_timestamp("2024-01-01T00:00:00Z") == "1704067200.000000000"
    with pytest.raises(UsageError):
        parse_timestamp("yesterday")
    assert parse_filters(["status=running", "label=a=b", "status=paused"]) == {
        "status": ["running", "paused"], "label": ["a=b"]}
    with pytest.raises(UsageError):
        parse_filters(["nonsense"])


def test_start_status_from_engine_messages() -> None:
    assert start_status(Exception('exec: "nope": executable file not found in $PATH')) == 127
    assert start_status(Exception("stat /x: no such file or directory")) == 127
    assert start_status(Exception("exec /etc/passwd: permission denied")) == 126
    assert start_status(Exception("cgroup trouble")) == 125


def test_detach_keys() -> None:
    keys = DetachKeys("ctrl-p,ctrl-q")
    assert keys.sequence == b"\x10\x11"
    assert keys.feed(b"ab\x10") == (b"ab", False)  # a prefix is held back
    assert keys.feed(b"c") == (b"\x10c", False)  # ...and passed on when it breaks
    assert keys.feed(b"x\x10\x10\x11tail") == (b"x\x10", True)
    assert DetachKeys("a,ctrl-@,ctrl-[").sequence == b"a\x00\x1b"
    for bad in ("ctrl-1", "ctrl-pp", "abc"):
        with pytest.raises(UsageError, match="Invalid detach keys"):
            DetachKeys(bad)


def test_cp_and_host_arguments() -> None:
    assert split_cp_arg("web:/etc/hosts") == ("web", "/etc/hosts")
    assert split_cp_arg("/tmp/a:b") == (None, "/tmp/a:b")
    assert split_cp_arg("./a:b") == (None, "./a:b")
    assert split_cp_arg("-") == (None, "-")
    assert split_host(["-H", "unix:///x.sock", "ps", "-a"]) == ("unix:///x.sock", ["ps", "-a"])
    assert split_host(["--host=tcp://h:1", "run", "busybox", "sh", "-H"]) == \
           ("tcp://h:1", ["run", "busybox", "sh", "-H"])
    assert split_host(["exec", "c", "-H", "x"]) == (None, ["exec", "c", "-H", "x"])


def test_df_table_and_event_line() -> None:
    df = {"LayersSize": 4_000_000,
          "Images": [{"Size": 3_000_000, "SharedSize": 0, "Containers": 1},
                     {"Size": 1_000_000, "SharedSize": 0, "Containers": 0}],
          "Containers": [{"SizeRw": 100, "State": "running"}, {"SizeRw": 300, "State": "exited"}],
          "Volumes": [{"UsageData": {"Size": 2048, "RefCount": 0}},
                      {"UsageData": {"Size": -1, "RefCount": -1}}],
          "BuildCache": []}
    assert df_table(df) == (
        "TYPE            TOTAL     ACTIVE    SIZE      RECLAIMABLE\n"
        "Images          2         1         4MB       1MB (25%)\n"
        "Containers      2         1         400B      300B (75%)\n"
        "Local Volumes   2         0         2.048kB   2.048kB (100%)\n"
        "Build Cache     0         0         0B        0B\n")
    ev = {"Type": "container", "Action": "start", "Actor": {
        "ID": "abc", "Attributes": {"name": "web", "image": "busybox"}},
        "time": 1, "timeNano": 1_700_000_000_123_456_789}
    line = event_line(ev)
    assert line.endswith(" container start abc (image=busybox, name=web)")
    assert ".123456789" in line.split()[0]
    assert event_line({"Type": "image", "Action": "tag", "Actor": {"ID": "x"},
                       "timeNano": 0}).endswith(" image tag x")


# -- verbs against a fake engine ------------------------------------------------------


class FakeEngine:
    """Just enough of EngineClient for the verbs below."""

    def __init__(self) -> None:
        self.removed: list[tuple[str, bool, bool]] = []
        self.listed: list[dict[str, Any]] = []

    def container_list(self, **kw: Any) -> list[dict[str, Any]]:
        self.listed.append(kw)
        return [{"Id": "f" * 64, "Names": ["/web"], "Image": "busybox", "Command": "sleep 9",
                 "Created": time.time() - 3, "State": "running", "Status": "Up 3 seconds"}]

    def container_remove(self, name: str, *, force: bool = False,
                         volumes: bool = False) -> None:
        if name == "nope":
            raise NotFound("No such container: nope")
        if name == "busy" and not force:
            raise Conflict("You cannot remove a running container busy")
        self.removed.append((name, force, volumes))

    def close(self) -> None:
        pass


def _main(argv: list[str], fake: FakeEngine) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(argv, cast(EngineClient, fake), stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()


def test_ps_verbs() -> None:
    fake = FakeEngine()
    status, out, _ = _main(["ps", "-a", "--filter", "status=running", "-n", "3"], fake)
    assert status == 0
    assert out.splitlines() == [
        "CONTAINER ID   IMAGE     COMMAND     CREATED         STATUS         PORTS     NAMES",
        "ffffffffffff   busybox   \"sleep 9\"   3 seconds ago   Up 3 seconds             web"]
    assert fake.listed[0] == {"all": True, "limit": 3, "size": False,
                              "filters": {"status": ["running"]}}
    assert _main(["container", "ls", "-q", "--no-trunc"], fake)[1] == "f" * 64 + "\n"
    status, out, _ = _main(["ps", "--format", "{{.Names}}:{{.State}}"], fake)
    assert out == "web:running\n"
    status, _, err = _main(["ps", "--format", "{{.Bogus}}"], fake)
    assert status == 1 and "can't evaluate field Bogus" in err


def test_rm_reports_each_failure() -> None:
    fake = FakeEngine()
    status, out, err = _main(["rm", "-v", "a", "nope", "busy"], fake)
    assert status == 1
    assert out == "a\n"
    assert err.splitlines() == ["Error response from daemon: No such container: nope",
                                "Error response from daemon: You cannot remove a running "
                                "container busy"]
    assert fake.removed == [("a", False, True)]
    assert _main(["container", "rm", "-f", "busy"], fake)[:2] == (0, "busy\n")


def test_usage_errors_and_help() -> None:
    fake = FakeEngine()
    status, _, err = _main(["ps", "--bogus"], fake)
    assert status == 125 and err.startswith("ketch: unknown flag: --bogus")
    assert "See 'ketch ps --help'." in err
    status, _, err = _main(["run", "-m", "x", "busybox"], fake)
    assert status == 125 and "invalid size" in err
    status, out, _ = _main(["volume"], fake)
    assert status == 0 and "Manage volumes" in out
    with pytest.raises(SystemExit):  # argparse prints help and exits; main turns it into 0
        parser().parse_args(["--help"])
    assert _main(["--version"], fake)[0] == 0
