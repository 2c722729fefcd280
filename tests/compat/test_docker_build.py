"""`DOCKER_BUILDKIT=0 docker build` and docker-py `images.build` against a private ketchd.

The ketchd runs in a throwaway network namespace with no way out (see conftest): bases
are the seeded busybox image, RUN steps have no internet. Each test writes its own
context directory; what a user would check is checked: the CLI's output and exit
status, the image's config and history, files in a container of the result, cache
hits and misses, and that a failed build leaves no container and no new tag.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.compat.conftest import Ketchd, seed_busybox, start_ketchd, stop_process
from tests.compat.conftest import write_files as write

pytestmark = pytest.mark.skipif(not os.path.exists("/bin/busybox"),
                                reason="needs busybox-static")

_CLASSIC = {"DOCKER_BUILDKIT": "0"}


def build(d: Ketchd, ctx: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return d.docker("build", *args, str(ctx), env=_CLASSIC)


def built(d: Ketchd, ctx: Path, *args: str) -> str:
    r = build(d, ctx, *args)
    assert r.returncode == 0, f"out={r.stdout}\nerr={r.stderr}"
    return r.stdout


def run(d: Ketchd, image: str, *cmd: str) -> str:
    r = d.docker("run", "--rm", "--network", "none", image, *cmd)
    assert r.returncode == 0, f"out={r.stdout}\nerr={r.stderr}"
    return r.stdout


def inspect(d: Ketchd, image: str) -> dict[str, Any]:
    r = d.docker("image", "inspect", image)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)[0]  # type: ignore[no-any-return]


def containers(d: Ketchd) -> list[str]:
    return d.docker("ps", "-aq").stdout.split()


@pytest.fixture(scope="module")
def kd(ketchd_busybox: Ketchd) -> Ketchd:
    return ketchd_busybox


def test_classic_build_run_copy_and_metadata(kd: Ketchd, tmp_path: Path) -> None:
    ctx = write(tmp_path, {
        "Dockerfile": (
            "FROM busybox\n"
            "ENV GREETING=hello WHO=world\n"
            "WORKDIR /app\n"
            "COPY hello.txt ./\n"
            "COPY dir/ /data/\n"
            "RUN echo \"$GREETING $WHO\" > /app/out.txt && cat /app/out.txt\n"
            "LABEL org.example.name=demo\n"
            "EXPOSE 8080/tcp 53/udp\n"
            "USER 1000:1000\n"
            "VOLUME /cache\n"
            "STOPSIGNAL SIGINT\n"
            "ENTRYPOINT [\"/bin/sh\", \"-c\"]\n"
            "CMD [\"cat /app/out.txt\"]\n"),
        "hello.txt": "hi from the context\n",
        "dir/a.txt": "A\n",
        "dir/sub/b.txt": "B\n",
    })
    before = containers(kd)
    out = built(kd, ctx, "-t", "demo:1", "-t", "demo:latest")
    assert "Step 1/13 : FROM busybox" in out
    assert "Step 6/13 : RUN echo" in out
    assert "hello world" in out  # the RUN's own output
    assert "Successfully built " in out
    assert "Successfully tagged demo:1" in out and "Successfully tagged demo:latest" in out
    assert containers(kd) == before  # intermediate containers removed
    cfg = inspect(kd, "demo:1")["Config"]
    assert "GREETING=hello" in cfg["Env"] and "WHO=world" in cfg["Env"]
    assert cfg["WorkingDir"] == "/app"
    assert cfg["Labels"] == {"org.example.name": "demo"}
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert cfg["User"] == "1000:1000"
    assert cfg["Volumes"] == {"/cache": {}}
    assert cfg["StopSignal"] == "SIGINT"
    assert cfg["Entrypoint"] == ["/bin/sh", "-c"]
    assert cfg["Cmd"] == ["cat /app/out.txt"]
    shown = run(kd, "demo:1")
    assert shown == "hello world\n"
    r = kd.docker("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", "demo:1",
                  "-c", "cat /app/hello.txt /data/a.txt /data/sub/b.txt; stat -c '%u:%g' "
                  "/app/hello.txt")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi from the context\nA\nB\n0:0\n"
    hist = kd.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", "demo:1")
    assert hist.returncode == 0, hist.stderr
    lines = hist.stdout.splitlines()
    assert any("#(nop)" in x and "ENV GREETING=hello WHO=world" in x for x in lines)
    assert any(x.startswith("/bin/sh -c echo") for x in lines)
    assert any("COPY file:" in x for x in lines)


def layer_members(d: Ketchd, image: str) -> list[list[str]]:
    """The member names of each layer of ``image`` (bottom first), from ``docker save``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=d.url, DOCKER_CONFIG=str(d.root / "docker-config"))
    r = subprocess.run(["docker", "save", image], env=env, capture_output=True, check=True)
    out: list[list[str]] = []
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            data = tf.extractfile(layer)
            assert data is not None
            with tarfile.open(fileobj=io.BytesIO(data.read())) as lt:
                out.append(sorted(m.name for m in lt.getmembers()))
    return out


def test_layers_hold_only_what_each_step_changed(kd: Ketchd, tmp_path: Path) -> None:
    ctx = write(tmp_path, {
        "Dockerfile": "FROM busybox\nCOPY f.txt /opt/app/\nRUN echo x > /tmp/made\n",
        "f.txt": "f\n",
    })
    built(kd, ctx, "-t", "layers:1")
    layers = layer_members(kd, "layers:1")
    assert layers[-2] == ["opt", "opt/app", "opt/app/f.txt"]
    assert layers[-1] == ["tmp", "tmp/made"]


def test_cache_hits_and_an_edited_file_reruns_from_its_copy(kd: Ketchd, tmp_path: Path) -> None:
    ctx = write(tmp_path, {
        "Dockerfile": ("FROM busybox\n"
                       "RUN echo one > /one\n"
                       "COPY a.txt /a.txt\n"
                       "RUN cat /a.txt > /copied\n"
                       "COPY b.txt /b.txt\n"),
        "a.txt": "first\n",
        "b.txt": "b\n",
    })
    first = built(kd, ctx, "-t", "cached:1")
    assert "Using cache" not in first
    again = built(kd, ctx, "-t", "cached:1")
    assert again.count(" ---> Using cache") == 4
    assert "Running in" not in again
    assert inspect(kd, "cached:1")["Id"].removeprefix("sha256:")[:12] in again
    # only mtime changes: still cached
    os.utime(ctx / "a.txt", (1, 1))
    assert built(kd, ctx, "-t", "cached:1").count(" ---> Using cache") == 4
    # content changes: steps 1-2 cached, from the COPY of a.txt on rebuilt
    (ctx / "a.txt").write_text("second\n")
    edited = built(kd, ctx, "-t", "cached:1")
    assert edited.count(" ---> Using cache") == 1
    assert edited.count("Running in") == 1
    assert run(kd, "cached:1", "cat", "/copied") == "second\n"
    # --no-cache runs everything
    nocache = built(kd, ctx, "--no-cache", "-t", "cached:2")
    assert "Using cache" not in nocache and nocache.count("Running in") == 2


def test_dockerignore_and_build_args(kd: Ketchd, tmp_path: Path) -> None:
    ctx = write(tmp_path, {
        "Dockerfile": ("ARG BASE=busybox\n"
                       "FROM ${BASE}\n"
                       "ARG FLAVOR=plain\n"
                       "ARG UNSET\n"
                       "COPY . /ctx/\n"
                       "RUN echo \"flavor=$FLAVOR unset=[$UNSET]\" > /flavor\n"
                       "ENV FLAVOR_ENV=$FLAVOR\n"),
        ".dockerignore": "secret*\n*.log\n!keep.log\n",
        "secret.key": "nope\n",
        "debug.log": "nope\n",
        "keep.log": "kept\n",
        "src/main.txt": "main\n",
    })
    out = built(kd, ctx, "-t", "args:1", "--build-arg", "FLAVOR=spicy",
                "--build-arg", "NOTUSED=1")
    assert "[Warning] One or more build-args [NOTUSED] were not consumed" in out
    listing = run(kd, "args:1", "find", "/ctx", "-type", "f")
    assert sorted(listing.split()) == ["/ctx/.dockerignore", "/ctx/Dockerfile",
                                       "/ctx/keep.log", "/ctx/src/main.txt"]
    assert run(kd, "args:1", "cat", "/flavor") == "flavor=spicy unset=[]\n"
    env = inspect(kd, "args:1")["Config"]["Env"]
    assert "FLAVOR_ENV=spicy" in env
    assert not any(e.startswith("FLAVOR=") for e in env)  # ARGs are not stored
    hist = kd.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", "args:1").stdout
    assert "|1 FLAVOR=spicy /bin/sh -c echo" in hist
    # a different build-arg value is a cache miss for the RUN that sees it
    other = built(kd, ctx, "-t", "args:2", "--build-arg", "FLAVOR=mild")
    assert other.count("Running in") == 1


def test_failing_run_names_step_and_code_and_leaves_nothing(kd: Ketchd,
                                                            tmp_path: Path) -> None:
    ctx = write(tmp_path, {"Dockerfile": ("FROM busybox\n"
                                          "RUN echo good > /good\n"
                                          "RUN echo about to fail; exit 3\n"
                                          "RUN echo never\n")})
    before = containers(kd)
    images_before = set(kd.docker("images", "-q", "--no-trunc").stdout.split())
    r = build(kd, ctx, "-t", "failing:1")
    assert r.returncode != 0
    assert "about to fail" in r.stdout
    assert "Step 3/4 : RUN echo about to fail; exit 3" in r.stdout
    assert "The command '/bin/sh -c echo about to fail; exit 3' returned a non-zero code: 3" \
        in r.stderr
    assert "Dockerfile:3" in r.stderr
    assert "never" not in r.stdout
    assert containers(kd) == before
    assert kd.docker("image", "inspect", "failing:1").returncode != 0
    # the step that succeeded is cached: the next attempt reuses it
    again = build(kd, ctx, "-t", "failing:1")
    assert again.stdout.count("Using cache") == 1
    # nothing but that cached step is new among the (non-intermediate) images
    images_after = set(kd.docker("images", "-q", "--no-trunc").stdout.split())
    assert len(images_after - images_before) <= 1


@pytest.mark.parametrize(("dockerfile", "files", "wanted"), [
    ("FROM busybox\nFOO bar\n", {}, "unknown instruction: FOO"),
    ("FROM busybox\nCOPY ../outside /x\n", {}, "forbidden path outside the build context"),
    ("FROM busybox\nCOPY link/passwd /x\n", {"link": None},
     "forbidden path outside the build context"),
    ("FROM busybox\nCOPY missing.txt /x\n", {}, "missing.txt"),
    ("FROM busybox\nCOPY --from=nosuchstage /a /b\n", {}, "Dockerfile:2"),
    ("FROM busybox AS a\nFROM busybox\nCOPY --chmod=999 Dockerfile /x\n", {}, "chmod"),
    ("FROM busybox\nEXPOSE 80/nope\n", {}, "invalid proto"),
])
def test_bad_input_names_the_line(kd: Ketchd, tmp_path: Path, dockerfile: str,
                                  files: dict[str, Any], wanted: str) -> None:
    write(tmp_path, {"Dockerfile": dockerfile})
    for name in files:
        os.symlink("/etc", tmp_path / name)
    before = containers(kd)
    r = build(kd, tmp_path, "-t", "bad:1")
    assert r.returncode != 0
    assert wanted in r.stderr, r.stderr
    assert containers(kd) == before
    assert kd.docker("image", "inspect", "bad:1").returncode != 0


def test_multistage_target_and_copy_from(kd: Ketchd, tmp_path: Path) -> None:
    ctx = write(tmp_path, {
        "Dockerfile": ("FROM busybox AS one\n"
                       "RUN echo from-one > /one.txt\n"
                       "FROM busybox AS two\n"
                       "RUN echo from-two > /two.txt\n"
                       "FROM busybox AS unused\n"
                       "RUN echo SHOULD-NOT-RUN\n"
                       "FROM busybox AS final\n"
                       "COPY --from=one /one.txt /got/\n"
                       "COPY --from=1 /two.txt /got/\n"
                       "COPY --from=busybox /bin/busybox /got/\n"
                       "FROM final AS after\n"
                       "RUN echo after\n"),
    })
    out = built(kd, ctx, "--target", "final", "-t", "multi:1")
    assert "SHOULD-NOT-RUN" not in out
    assert "RUN echo after" not in out
    assert run(kd, "multi:1", "cat", "/got/one.txt", "/got/two.txt") == "from-one\nfrom-two\n"
    assert run(kd, "multi:1", "/got/busybox", "echo", "ok") == "ok\n"
    r = build(kd, ctx, "--target", "nosuch")
    assert r.returncode != 0 and "nosuch" in r.stderr


def test_add_archive_chown_chmod_heredoc_and_onbuild(kd: Ketchd, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in (("pkg/readme", b"readme\n"),
                           ("pkg/bin/tool", b"#!/bin/sh\necho tool\n")):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o755
            tf.addfile(ti, io.BytesIO(data))
    ctx = write(tmp_path, {
        "Dockerfile": ("FROM busybox\n"
                       "ADD pkg.tar.gz /opt/\n"
                       "COPY --chown=1234:2345 --chmod=600 plain.txt /plain.txt\n"
                       "COPY <<EOF /inline.txt\n"
                       "inline body\n"
                       "EOF\n"
                       "SHELL [\"/bin/sh\", \"-c\"]\n"
                       "HEALTHCHECK --interval=5s CMD true\n"
                       "ONBUILD RUN echo triggered > /trigger\n"),
        "pkg.tar.gz": buf.getvalue(),
        "plain.txt": "plain\n",
    })
    built(kd, ctx, "-t", "parent:1")
    assert run(kd, "parent:1", "/opt/pkg/bin/tool") == "tool\n"
    assert run(kd, "parent:1", "stat", "-c", "%u:%g %a", "/plain.txt") == "1234:2345 600\n"
    assert run(kd, "parent:1", "cat", "/inline.txt") == "inline body\n"
    cfg = inspect(kd, "parent:1")["Config"]
    assert cfg["OnBuild"] == ["RUN echo triggered > /trigger"]
    assert cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "true"]
    assert cfg["Healthcheck"]["Interval"] == 5_000_000_000
    child = tmp_path / "child"
    write(child, {"Dockerfile": "FROM parent:1\nRUN cat /trigger\n"})
    out = built(kd, child, "-t", "child:1")
    assert "Executing 1 build trigger" in out
    assert run(kd, "child:1", "cat", "/trigger") == "triggered\n"
    assert not inspect(kd, "child:1")["Config"].get("OnBuild")


@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_docker_py_build_and_cache_survives_restart(tmp_path_factory: pytest.TempPathFactory,
                                                    tmp_path: Path) -> None:
    import docker

    root = tmp_path_factory.mktemp("ketchd-build-restart")
    seed_busybox(root)
    d = start_ketchd(root)
    ctx = write(tmp_path, {"Dockerfile": "FROM busybox\nCOPY f /f\nRUN cat /f > /g\n",
                           "f": "content\n"})
    try:
        client = docker.DockerClient(base_url=d.url)
        image, logs = client.images.build(path=str(ctx), tag="py:1", labels={"via": "py"})
        text = "".join(str(x.get("stream", "")) for x in logs)
        assert "Successfully built" in text
        assert image.labels == {"via": "py"}
        assert "py:1" in image.tags
        client.close()
        stop_process(d.proc)
        d = start_ketchd(root)
        client = docker.DockerClient(base_url=d.url)
        again, logs = client.images.build(path=str(ctx), tag="py:1", labels={"via": "py"})
        text = "".join(str(x.get("stream", "")) for x in logs)
        assert text.count("Using cache") == 3
        assert again.id == image.id
        with pytest.raises(docker.errors.BuildError) as err:
            client.images.build(fileobj=io.BytesIO(b"FROM busybox\nRUN exit 7\n"))
        assert "returned a non-zero code: 7" in str(err.value)
        client.close()
    finally:
        stop_process(d.proc)
        import gc
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        gc.collect()  # docker-py's pooled sockets are collected here, under this test's filter


def ketch_build(d: Ketchd, *args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "ketch.cmd.ketch", "-H", d.url, "build",
                           *args], capture_output=True, text=True, timeout=60, check=False)


def test_ketch_build_cli(kd: Ketchd, tmp_path: Path) -> None:
    ctx = write(tmp_path / "ctx", {
        "app.txt": "app\n", "ignored.txt": "x\n", ".dockerignore": "ignored.txt\n"})
    dockerfile = write(tmp_path, {"other.Dockerfile": (
        "FROM busybox AS base\nARG MSG\nCOPY . /src/\nRUN echo \"msg=$MSG\"; ls /src\n")})
    r = ketch_build(kd, "-f", str(dockerfile / "other.Dockerfile"), "-t", "kb:1",
                    "--build-arg", "MSG=hi", "--label", "a=b", "--target", "base",
                    str(ctx))
    assert r.returncode == 0, r.stderr
    assert "[1/5] FROM busybox AS base" in r.stdout
    assert "  | msg=hi" in r.stdout
    assert "ignored.txt" not in r.stdout and "  | app.txt" in r.stdout
    assert "Successfully tagged kb:1" in r.stdout
    assert inspect(kd, "kb:1")["Config"]["Labels"] == {"a": "b"}
    again = ketch_build(kd, "-q", "-f", str(dockerfile / "other.Dockerfile"), "-t", "kb:1",
                        "--build-arg", "MSG=hi", "--label", "a=b", str(ctx))
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == inspect(kd, "kb:1")["Id"]
    bad = write(tmp_path / "bad", {"Dockerfile": "FROM busybox\nRUN exit 4\n"})
    fail = ketch_build(kd, str(bad))
    assert fail.returncode == 1
    assert "returned a non-zero code: 4" in fail.stderr
