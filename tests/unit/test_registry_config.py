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
