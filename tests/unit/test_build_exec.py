"""The build executor's pure parts: config changes, cache keys and persistence, COPY
destination rules on a plain directory, the router's query parsing, the CLI display."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from ketch.engine.build import config as cfgmod
from ketch.engine.build.cache import BuildCache, step_key
from ketch.engine.build.executor import _split_tag
from ketch.engine.build.files import CopySpec, _plan, parse_chmod, resolve_owner
from ketch.engine.build.run import _without_mount_points
from ketch.errors import InvalidArgument
from ketch.httpserver import Headers, Request
from ketch.image.build import instructions as ins
from ketch.image.build.context import BuildContext
from ketch.image.build.parser import parse


def one(text: str) -> ins.Instruction:
    return parse("FROM scratch\n" + text).instructions[1]


SH = ["/bin/sh", "-c"]


def test_metadata_instructions_change_the_config_like_docker() -> None:
    cfg, by = cfgmod.apply_metadata({}, one("CMD echo hi"), shell=SH, image_env=[])
    assert cfg["Cmd"] == ["/bin/sh", "-c", "echo hi"]
    assert by == '/bin/sh -c #(nop)  CMD ["/bin/sh", "-c", "echo hi"]'
    cfg, _ = cfgmod.apply_metadata({"Cmd": ["x"]}, one('ENTRYPOINT ["/app"]'), shell=SH,
                                   image_env=[])
    assert cfg["Entrypoint"] == ["/app"] and cfg["Cmd"] is None  # inherited CMD reset
    cfg, _ = cfgmod.apply_metadata({"Cmd": ["x"]}, one('ENTRYPOINT ["/app"]'), shell=SH,
                                   image_env=[], cmd_set=True)
    assert cfg["Cmd"] == ["x"]
    cfg, _ = cfgmod.apply_metadata({}, one("EXPOSE 80 53/udp 7000-7001"), shell=SH,
                                   image_env=[])
    assert set(cfg["ExposedPorts"]) == {"80/tcp", "53/udp", "7000/tcp", "7001/tcp"}
    cfg, by = cfgmod.apply_metadata({"WorkingDir": "/a"}, one("WORKDIR b/../c"), shell=SH,
                                    image_env=[])
    assert cfg["WorkingDir"] == "/a/c" and by == "/bin/sh -c #(nop) WORKDIR /a/c"
    cfg, _ = cfgmod.apply_metadata({}, one("HEALTHCHECK --interval=2s --retries=3 CMD true"),
                                   shell=SH, image_env=[])
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "true"], "Interval": 2_000_000_000,
                                  "Retries": 3}
    cfg, _ = cfgmod.apply_metadata({"OnBuild": ["RUN a"]}, one("ONBUILD RUN b"), shell=SH,
                                   image_env=[])
    assert cfg["OnBuild"] == ["RUN a", "RUN b"]
    with pytest.raises(InvalidArgument, match="Invalid signal"):
        cfgmod.apply_metadata({}, one("STOPSIGNAL SIGNOPE"), shell=SH, image_env=[])
    cfg, _ = cfgmod.apply_metadata({}, one("STOPSIGNAL 9"), shell=SH, image_env=[])
    assert cfg["StopSignal"] == "9"


def test_step_keys_and_cache_persist_and_forget_removed_images(tmp_path: Path) -> None:
    assert step_key("p", "RUN x") == step_key("p", "RUN x")
    assert step_key("p", "RUN x") != step_key("p", "RUN y")
    alive = {"sha256:a"}
    cache = BuildCache(str(tmp_path), lambda i: i in alive)
    cache.put("k1", "sha256:a")
    cache.put("k2", "sha256:b")
    again = BuildCache(str(tmp_path), lambda i: i in alive)  # a daemon restart
    assert again.get("k1") == "sha256:a"
    assert again.get("k2") is None  # its image is gone: the entry is dropped
    assert len(again) == 1
    assert json.loads((tmp_path / "cache.json").read_text()) == {"k1": "sha256:a"}


def _ctx(tmp_path: Path, files: dict[str, str]) -> BuildContext:
    ctx = tmp_path / "ctx"
    for name, data in files.items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(data)
    return BuildContext.from_directory(str(ctx))


def test_copy_destination_rules(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "existing").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "run").mkdir()
    (root / "var" / "run").symlink_to("../run")
    ctx = _ctx(tmp_path, {"a.txt": "a", "d/x": "x", "d/sub/y": "y"})

    def plan(sources: list[str], dest: str, workdir: str = "/") -> list[tuple[str, str]]:
        srcs = ctx.resolve(sources, line=2, dest=dest)
        spec = CopySpec(ctx, srcs, dest, workdir)
        return [(i.name, i.kind) for i in _plan(str(root), spec, (0, 0))]

    assert plan(["a.txt"], "/new.txt") == [("new.txt", "file")]
    assert plan(["a.txt"], "/existing") == [("existing/a.txt", "file")]
    assert plan(["a.txt"], "/made/") == [("made", "dir"), ("made/a.txt", "file")]
    assert plan(["a.txt"], "rel/", workdir="/w") == [("w", "dir"), ("w/rel", "dir"),
                                                     ("w/rel/a.txt", "file")]
    assert plan(["d"], "/t") == [("t", "dir"), ("t/sub", "dir"), ("t/sub/y", "file"),
                                 ("t/x", "file")]
    # through a symlink in the image: the real path is what the layer records
    assert plan(["a.txt"], "/var/run/") == [("run/a.txt", "file")]
    with pytest.raises(InvalidArgument, match="must be a directory"):
        ctx.resolve(["a.txt", "d"], line=2, dest="/file")


def test_chown_names_come_from_the_image_and_chmod_is_octal(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("app:x:1001:1002::/home/app:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("staff:x:50:\n")
    assert resolve_owner(str(tmp_path), "app", 3, "COPY") == (1001, 1002)
    assert resolve_owner(str(tmp_path), "app:staff", 3, "COPY") == (1001, 50)
    assert resolve_owner(str(tmp_path), "7:8", 3, "COPY") == (7, 8)
    assert resolve_owner(str(tmp_path), None, 3, "COPY") == (0, 0)
    with pytest.raises(InvalidArgument, match=r"Dockerfile:3: .*no such user: nobody"):
        resolve_owner(str(tmp_path), "nobody", 3, "COPY")
    assert parse_chmod("0750", 1, "COPY") == 0o750
    with pytest.raises(InvalidArgument, match=r"Dockerfile:1: .*chmod"):
        parse_chmod("u+x", 1, "COPY")


def test_run_layer_drops_the_runtime_mount_points() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("etc/", None), ("etc/hosts", b""), ("etc/resolv.conf", b""),
                           ("tmp/", None), ("tmp/made", b"x\n")):
            ti = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    buf.seek(0)
    out = io.BytesIO()
    assert _without_mount_points(buf, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tf:
        assert [m.name for m in tf.getmembers()] == ["tmp", "tmp/made"]
        made = tf.extractfile("tmp/made")
        assert made is not None and made.read() == b"x\n"


def test_split_tag() -> None:
    assert _split_tag("app") == ("app", None)
    assert _split_tag("app:1") == ("app", "1")
    assert _split_tag("localhost:5000/app") == ("localhost:5000/app", None)
    assert _split_tag("localhost:5000/app:2") == ("localhost:5000/app", "2")


def _request(query: str) -> Request:
    return Request("POST", "/build?" + query, "HTTP/1.1", Headers([]))


def test_router_parses_the_classic_query() -> None:
    from ketch.api.routers.build import parse_options
    from ketch.errors import NotImplementedYet

    opts = parse_options(_request(
        "t=a:1&t=b&dockerfile=sub/Df&buildargs=%7B%22X%22%3A%221%22%2C%22Y%22%3Anull%7D"
        "&nocache=1&rm=0&target=final&labels=%7B%22l%22%3A%22v%22%7D&q=1&networkmode=none"))
    assert opts.tags == ("a:1", "b") and opts.dockerfile == "sub/Df"
    assert opts.build_args == {"X": "1", "Y": None}
    assert opts.no_cache and not opts.remove and opts.quiet
    assert opts.target == "final" and opts.labels == {"l": "v"} and opts.network_mode == "none"
    with pytest.raises(InvalidArgument, match="buildargs"):
        parse_options(_request("buildargs=%5B1%5D"))
    with pytest.raises(NotImplementedYet, match="DOCKER_BUILDKIT=0"):
        parse_options(_request("version=2"))


def test_cli_display_is_compact() -> None:
    from ketch.client.cli.build import BuildDisplay

    out = io.StringIO()
    d = BuildDisplay(out)
    for text in ("Step 1/2 : FROM busybox\n", " ---> 123456789abc\n", "Step 2/2 : RUN x\n",
                 " ---> Running in abc\n", "hello\n", "Removing intermediate container abc\n",
                 " ---> Using cache\n", "Successfully built 1\n"):
        d.show({"stream": text})
    assert out.getvalue() == ("[1/2] FROM busybox\n[2/2] RUN x\n  | hello\n  (cached)\n"
                              "Successfully built 1\n")
