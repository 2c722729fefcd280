"""``ketch registry`` configuration: TOML file, env overrides, flags, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from ketch.errors import InvalidArgument
from ketch.registry.config import load_config

TOML = """
[http]
addr = "0.0.0.0:6000"
[storage]
root = "/srv/reg"
fsync = false
[limits]
workers = 4
"""


def test_defaults() -> None:
    cfg = load_config(env={}, overrides={"storage_root": "/x"})
    assert cfg.host_port() == ("127.0.0.1", 5000)
    assert cfg.storage_params() == {"root": "/x", "fsync": True}
    assert cfg.tls_cert is None


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "reg.toml"
    f.write_text(TOML)
    cfg = load_config(str(f), env={})
    assert (cfg.addr, cfg.storage_root, cfg.fsync, cfg.workers) == \
        ("0.0.0.0:6000", "/srv/reg", False, 4)
    env = {"KETCH_REGISTRY_HTTP_ADDR": "127.0.0.1:7000", "KETCH_REGISTRY_STORAGE_FSYNC": "on",
           "KETCH_REGISTRY_LIMITS_WORKERS": "2"}
    cfg = load_config(str(f), env=env)
    assert (cfg.addr, cfg.fsync, cfg.workers) == ("127.0.0.1:7000", True, 2)
    cfg = load_config(str(f), env=env, overrides={"addr": "[::1]:8000", "storage_root": None})
    assert cfg.host_port() == ("::1", 8000)
    assert cfg.storage_root == "/srv/reg"  # None flags do not override


@pytest.mark.parametrize("text,env", [
    ("[http]\nport = 1\n", {}),                    # unknown key
    ("[storage]\nfsync = \"maybe\"\n", {}),        # wrong type
    ("[limits]\nworkers = true\n", {}),            # bool is not an int
    ("not toml at all [", {}),
    ("http = 1\n", {}),                            # not a table
    ("", {"KETCH_REGISTRY_LIMITS_WORKERS": "many"}),
    ("", {"KETCH_REGISTRY_HTTP_ADDR": "nohostport"}),
    ("", {"KETCH_REGISTRY_HTTP_TLS_CERT": "/only/cert"}),
    ("[limits]\nworkers = 0\n", {}),
])
def test_bad_config(tmp_path: Path, text: str, env: dict[str, str]) -> None:
    f = tmp_path / "reg.toml"
    f.write_text(text)
    with pytest.raises(InvalidArgument):
        load_config(str(f), env=env)


def test_missing_file() -> None:
    with pytest.raises(InvalidArgument, match="cannot read config"):
        load_config("/nonexistent/reg.toml", env={})


def test_filesystem_needs_root() -> None:
    with pytest.raises(InvalidArgument, match="needs a root"):
        load_config(env={}).storage_params()
    assert load_config(env={"KETCH_REGISTRY_STORAGE_DRIVER": "inmemory"}).storage_params() == {}


def test_cli_reports_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ketch.cmd.registry import main

    f = tmp_path / "reg.toml"
    f.write_text("[http]\nbogus = 1\n")
    assert main(["serve", "--config", str(f), "--root", str(tmp_path)]) == 1
    assert "unknown key http.bogus" in capsys.readouterr().err


FULL = """
[auth]
method = "token"
htpasswd = "/etc/ketch/htpasswd"
anonymous_read = true
[token]
key = "/etc/ketch/token.key"
service = "svc"
expiry = "10m"
[[access]]
users = ["alice"]
repositories = ["team/*"]
actions = ["pull", "push"]
[[access]]
users = ["*"]
repositories = ["*"]
actions = ["pull"]
[gc]
interval = "1h"
grace = "90m"
upload_ttl = 3600
remove_untagged = true
[notifications]
endpoints = ["http://127.0.0.1:9/hook"]
headers = {Authorization = "Bearer x"}
timeout = "2s"
attempts = 3
backoff = "500ms"
"""


def test_auth_gc_notifications_keys(tmp_path: Path) -> None:
    f = tmp_path / "reg.toml"
    f.write_text(FULL)
    cfg = load_config(str(f), env={})
    assert (cfg.auth_method, cfg.htpasswd, cfg.anonymous_read) == \
        ("token", "/etc/ketch/htpasswd", True)
    assert (cfg.token_key, cfg.token_service, cfg.token_expiry) == \
        ("/etc/ketch/token.key", "svc", 600.0)
    assert len(cfg.access) == 2 and cfg.access[0]["users"] == ["alice"]
    assert (cfg.gc_interval, cfg.gc_grace, cfg.gc_upload_ttl, cfg.gc_remove_untagged) == \
        (3600.0, 5400.0, 3600.0, True)
    assert cfg.notify_endpoints == ("http://127.0.0.1:9/hook",)
    assert dict(cfg.notify_headers) == {"Authorization": "Bearer x"}
    assert (cfg.notify_timeout, cfg.notify_attempts, cfg.notify_backoff) == (2.0, 3, 0.5)
    env = {"KETCH_REGISTRY_AUTH_ANONYMOUS_READ": "false", "KETCH_REGISTRY_GC_GRACE": "0",
           "KETCH_REGISTRY_NOTIFICATIONS_ENDPOINTS": "http://a/x, http://b/y",
           "KETCH_REGISTRY_NOTIFICATIONS_HEADERS": '{"X-A": "1"}',
           "KETCH_REGISTRY_ACCESS": '[{"users": ["bob"], "repositories": ["*"], '
                                    '"actions": ["*"]}]'}
    cfg = load_config(str(f), env=env)
    assert (cfg.anonymous_read, cfg.gc_grace) == (False, 0.0)
    assert cfg.notify_endpoints == ("http://a/x", "http://b/y")
    assert dict(cfg.notify_headers) == {"X-A": "1"}
    assert [r["users"] for r in cfg.access] == [["bob"]]


@pytest.mark.parametrize("text,env", [
    ("[auth]\nmethod = \"magic\"\n", {}),
    ("[auth]\nmethod = \"basic\"\n", {}),                          # no htpasswd
    ("[auth]\nmethod = \"token\"\n", {}),                          # no key, nothing trusted
    ("[auth]\nmethod = \"token\"\n[token]\ntrusted = \"/c.pem\"\n", {}),   # no realm
    ("[auth]\nmethod = \"token\"\n[token]\nkey = \"/k.pem\"\n", {}),       # key, no users
    ("[gc]\ngrace = \"soon\"\n", {}),
    ("[gc]\ngrace = -5\n", {}),
    ("[notifications]\nendpoints = [1]\n", {}),                     # not strings
    ("[notifications]\nattempts = 0\n", {}),
    ("[[access]]\nusers = [\"a\"]\nrepositories = [\"*\"]\nactions = [\"fly\"]\n", {}),
    ("access = 3\n", {}),
    ("", {"KETCH_REGISTRY_ACCESS": "not json"}),
    ("", {"KETCH_REGISTRY_NOTIFICATIONS_HEADERS": "[1]"}),
])
def test_bad_auth_gc_notification_config(tmp_path: Path, text: str,
                                         env: dict[str, str]) -> None:
    f = tmp_path / "reg.toml"
    f.write_text(text)
    with pytest.raises(InvalidArgument):
        load_config(str(f), env=env)


def test_gc_cli_removes_orphans(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from ketch.cmd.registry import main
    from ketch.registry.repository import Registry
    from ketch.registry.storage import FilesystemDriver

    reg = Registry(FilesystemDriver(tmp_path / "store", fsync=False))
    upload = reg.start_upload("x")
    app = reg.appender("x", upload)
    app.write(b"orphan")
    app.commit()
    import hashlib

    from ketch.oci.digest import Digest
    d = Digest.parse("sha256:" + hashlib.sha256(b"orphan").hexdigest())
    reg.finish_upload("x", upload, d)
    root = str(tmp_path / "store")
    assert main(["gc", "--root", root, "--format", "json"]) == 0  # grace 1h: kept
    assert json.loads(capsys.readouterr().out)["blobs_kept_young"] == 1
    assert main(["gc", "--root", root, "--grace", "0", "--dry-run"]) == 0
    assert f"blob {d}" in capsys.readouterr().out
    assert (tmp_path / "store" / "blobs" / "sha256" / d.hex[:2] / d.hex / "data").exists()
    assert main(["gc", "--root", root, "--grace", "0s"]) == 0
    assert not (tmp_path / "store" / "blobs" / "sha256" / d.hex[:2] / d.hex).exists()


def test_passwd_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from ketch.cmd.registry import main
    from ketch.registry.passwords import Htpasswd, bcrypt_supported

    if not bcrypt_supported():
        pytest.skip("libcrypt without bcrypt")
    f = tmp_path / "htpasswd"
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-one\n"))
    assert main(["passwd", str(f), "alice", "--password-stdin", "--cost", "4"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-two\n"))
    assert main(["passwd", str(f), "bob", "--password-stdin", "--cost", "4"]) == 0
    h = Htpasswd(str(f))
    assert h.verify("alice", "pw-one") and h.verify("bob", "pw-two")
    assert main(["passwd", str(f), "alice", "--delete"]) == 0
    assert Htpasswd(str(f)).users == ["bob"]
    assert main(["passwd", str(f), "alice", "--delete"]) == 1
