"""Registry auth: bcrypt via libcrypt, htpasswd, RS256 tokens, Basic and Bearer over HTTP."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import InvalidArgument
from ketch.registry import jwt
from ketch.registry.auth import (
    AccessPolicy,
    AccessRule,
    BasicAuth,
    Scope,
    TokenAuth,
    TokenIssuer,
    needed_scopes,
)
from ketch.registry.passwords import Htpasswd, bcrypt_supported, check_password, hash_password
from ketch.registry.storage import InMemoryDriver
from tests.unit.test_registry_helpers import Client, Server, push_image, serve, sha

pytestmark = pytest.mark.skipif(not bcrypt_supported(), reason="libcrypt without bcrypt")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Htpasswd:
    f = tmp_path / "htpasswd"
    f.write_text(f"# users\nalice:{hash_password('wonderland', cost=4)}\n"
                 f"bob:{hash_password('builder', cost=4, prefix='$2b$')}\n"
                 "carol:$apr1$xyz$notsupported\n\n")
    return Htpasswd(str(f))


# -- passwords -------------------------------------------------------------------------


def test_bcrypt_round_trip_and_known_vector() -> None:
    h = hash_password("s3cret", cost=4)
    assert h.startswith("$2y$04$") and len(h) == 60
    assert check_password("s3cret", h)
    assert not check_password("s3cret!", h)
    assert not check_password("", h)
    assert not check_password("s3cret", "not a hash")


def test_bcrypt_known_vector() -> None:
    # The OpenBSD test vector: password "U*U", salt "CCCCCCCCCCCCCCCCCCCCC."
    assert check_password("U*U", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")
    assert not check_password("U*V", "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW")


def test_htpasswd_verify_reload_and_unsupported(htpasswd: Htpasswd, tmp_path: Path) -> None:
    assert htpasswd.users == ["alice", "bob", "carol"]
    assert htpasswd.verify("alice", "wonderland")
    assert htpasswd.verify("alice", "wonderland")  # cached
    assert htpasswd.verify("bob", "builder")
    assert not htpasswd.verify("alice", "builder")
    assert not htpasswd.verify("nobody", "wonderland")
    assert not htpasswd.verify("carol", "anything")  # $apr1$: libcrypt cannot check it
    f = Path(htpasswd.path)
    f.write_text(f"alice:{hash_password('changed', cost=4)}\n")
    assert not htpasswd.verify("alice", "wonderland")  # the cache went with the old file
    assert htpasswd.verify("alice", "changed")
    with pytest.raises(InvalidArgument):
        Htpasswd(str(tmp_path / "missing"))


def test_hash_password_refuses_bad_cost() -> None:
    with pytest.raises(InvalidArgument):
        hash_password("x", cost=3)


# -- scopes and policy -----------------------------------------------------------------


def test_scope_parse_and_needed() -> None:
    s = Scope.parse("repository:localhost:5000/a/b:pull,push")
    assert (s.type, s.name, s.actions) == ("repository", "localhost:5000/a/b", ("pull", "push"))
    assert str(s) == "repository:localhost:5000/a/b:pull,push"
    with pytest.raises(InvalidArgument):
        Scope.parse("repository")
    assert needed_scopes("repo", "GET", "x") == [Scope.repo("x", "pull")]
    assert needed_scopes("repo", "HEAD", "x") == [Scope.repo("x", "pull")]
    assert needed_scopes("repo", "PUT", "x") == [Scope.repo("x", "pull", "push")]
    assert needed_scopes("repo", "DELETE", "x") == [Scope.repo("x", "delete")]
    assert needed_scopes("upload", "DELETE", "x") == [Scope.repo("x", "pull", "push")]
    assert needed_scopes("upload", "GET", "x") == [Scope.repo("x", "pull", "push")]
    assert needed_scopes("catalog", "GET", None) == [Scope("registry", "catalog", ("*",))]
    assert needed_scopes("base", "GET", None) == []


def test_policy_rules() -> None:
    rules = (AccessRule.from_config({"users": ["alice"], "repositories": ["team/*"],
                                     "actions": ["pull", "push"]}, "a"),
             AccessRule.from_config({"users": ["*"], "repositories": ["public/*"],
                                     "actions": ["pull"]}, "b"))
    p = AccessPolicy(rules)
    assert p.allowed("alice", Scope.repo("team/app")) == {"pull", "push"}
    assert p.allowed("alice", Scope.repo("public/x")) == {"pull"}
    assert p.allowed("bob", Scope.repo("team/app")) == frozenset()
    assert p.allowed(None, Scope.repo("public/x")) == frozenset()
    assert AccessPolicy(rules, anonymous_read=True).allowed(None, Scope.repo("any")) == {"pull"}
    assert AccessPolicy().allowed("anyone", Scope.repo("x", "delete")) == {"*"}
    assert p.permits("alice", Scope.repo("team/app", "pull", "push"))
    assert not p.permits("alice", Scope.repo("team/app", "delete"))
    for bad in ({"users": ["a"], "repositories": ["x"], "actions": ["fly"]},
                {"users": [], "repositories": ["x"], "actions": ["pull"]},
                {"users": ["a"], "repositories": ["x"], "actions": ["pull"], "extra": 1}):
        with pytest.raises(InvalidArgument):
            AccessRule.from_config(bad, "access[0]")


# -- RS256 tokens ----------------------------------------------------------------------

OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    if OPENSSL is None:
        pytest.skip("openssl not installed (needed to make a test key)")
    d = tmp_path_factory.mktemp("keys")

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True)

    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", str(d / "pkcs8.pem"))
    run("rsa", "-in", str(d / "pkcs8.pem"), "-traditional", "-out", str(d / "pkcs1.pem"))
    run("pkey", "-in", str(d / "pkcs8.pem"), "-pubout", "-out", str(d / "pub.pem"))
    run("req", "-x509", "-key", str(d / "pkcs8.pem"), "-subj", "/CN=token", "-days", "1",
        "-out", str(d / "cert.pem"))
    run("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", str(d / "other.pem"))
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", str(d / "ec.pem"))
    return {p.stem: p.read_bytes() for p in d.iterdir()} | {"dir": str(d).encode()}


def test_key_formats_agree(keys: dict[str, bytes]) -> None:
    k8 = jwt.load_private_key(keys["pkcs8"])
    assert jwt.load_private_key(keys["pkcs1"]) == k8
    assert jwt.load_public_keys(keys["pub"]) == [k8.public]
    assert jwt.load_public_keys(keys["cert"]) == [k8.public]
    with pytest.raises(InvalidArgument):
        jwt.load_private_key(keys["ec"])
    with pytest.raises(InvalidArgument):
        jwt.load_public_keys(b"nothing here")


def test_signature_verifies_with_openssl(keys: dict[str, bytes], tmp_path: Path) -> None:
    key = jwt.load_private_key(keys["pkcs8"])
    token = jwt.encode({"iss": "i", "aud": "a", "exp": time.time() + 60}, key)
    signing_input, _, sig = token.rpartition(".")
    (tmp_path / "msg").write_bytes(signing_input.encode())
    (tmp_path / "sig").write_bytes(jwt.unb64url(sig))
    assert OPENSSL is not None
    r = subprocess.run([OPENSSL, "dgst", "-sha256", "-verify",
                        keys["dir"].decode() + "/pub.pem", "-signature", str(tmp_path / "sig"),
                        str(tmp_path / "msg")], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_decode_checks_everything(keys: dict[str, bytes]) -> None:
    key = jwt.load_private_key(keys["pkcs8"])
    pub = [key.public]
    now = time.time()
    good = {"iss": "reg", "aud": "svc", "exp": now + 60, "nbf": now - 1, "sub": "alice"}
    assert jwt.decode(jwt.encode(good, key), pub, issuer="reg", audience="svc")["sub"] == "alice"
    assert jwt.decode(jwt.encode(good | {"aud": ["x", "svc"]}, key), pub, issuer="reg",
                      audience="svc")
    bad_claims = [good | {"exp": now - 3600}, good | {"nbf": now + 3600}, good | {"iss": "x"},
                  good | {"aud": "other"}, {k: v for k, v in good.items() if k != "exp"}]
    for claims in bad_claims:
        with pytest.raises(jwt.TokenInvalid):
            jwt.decode(jwt.encode(claims, key), pub, issuer="reg", audience="svc")
    other = jwt.load_private_key(keys["other"])
    with pytest.raises(jwt.TokenInvalid, match="signature"):
        jwt.decode(jwt.encode(good, other), pub, issuer="reg", audience="svc")
    token = jwt.encode(good, key)
    h, c, s = token.split(".")
    forged = jwt.b64url(json.dumps(good | {"sub": "root"}).encode())
    with pytest.raises(jwt.TokenInvalid, match="signature"):
        jwt.decode(f"{h}.{forged}.{s}", pub, issuer="reg", audience="svc")
    for alg in ("none", "HS256"):
        header = jwt.b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        with pytest.raises(jwt.TokenInvalid, match="algorithm"):
            jwt.decode(f"{header}.{c}.", pub, issuer="reg", audience="svc")
    with pytest.raises(jwt.TokenInvalid):
        jwt.decode("garbage", pub, issuer="reg", audience="svc")


# -- over HTTP: Basic ------------------------------------------------------------------


def _serve(**opts: Any) -> Iterator[Server]:
    yield from serve(InMemoryDriver(), **opts)


@pytest.fixture
def basic_reg(htpasswd: Htpasswd) -> Iterator[Server]:
    rules = (AccessRule.from_config({"users": ["alice"], "repositories": ["*"],
                                     "actions": ["*"]}, "a"),
             AccessRule.from_config({"users": ["bob"], "repositories": ["*"],
                                     "actions": ["pull"]}, "b"))
    yield from _serve(authorizer=BasicAuth(htpasswd, AccessPolicy(rules), "test-realm"))


_OPEN: list[Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


class AuthClient(Client):
    """A client that sends fixed headers (credentials) with every request; closed
    after each test."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(port)
        self.extra = headers or {}
        _OPEN.append(self)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Any:
        return super().request(method, path, body, {**self.extra, **(headers or {})})


def test_basic_challenge_and_body(basic_reg: Server) -> None:
    c = AuthClient(basic_reg.port)
    for method, path in [("GET", "/v2/"), ("GET", "/v2/x/tags/list"), ("GET", "/v2/_catalog"),
                         ("POST", "/v2/x/blobs/uploads/")]:
        r = c.request(method, path)
        assert r.status == 401, (method, path)
        assert r.headers["www-authenticate"].startswith('Basic realm="test-realm"')
        assert r.codes() == ["UNAUTHORIZED"]
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    r = c.request("GET", "/v2/", headers=basic("alice", "wrong"))
    assert r.status == 401 and r.codes() == ["UNAUTHORIZED"]
    r = c.request("GET", "/v2/", headers={"Authorization": "Basic !!!"})
    assert r.status == 401
    assert c.request("GET", "/health").status == 200  # health needs no credentials
    assert c.request("GET", "/v2/", headers=basic("alice", "wonderland")).status == 200


def test_basic_push_pull_and_denied(basic_reg: Server) -> None:
    alice = AuthClient(basic_reg.port, basic("alice", "wonderland"))
    img = push_image(alice, "team/app", "v1")
    bob = AuthClient(basic_reg.port, basic("bob", "builder"))
    r = bob.request("GET", "/v2/team/app/manifests/v1")
    assert r.status == 200 and r.body == img.manifest
    r = bob.request("POST", f"/v2/team/app/blobs/uploads/?digest={sha(b'x')}", b"x")
    assert r.status == 403 and r.codes() == ["DENIED"]
    assert r.json()["errors"][0]["detail"] == [{"Type": "repository", "Name": "team/app",
                                                "Action": "pull,push"}]
    r = bob.request("DELETE", f"/v2/team/app/manifests/{img.digest}")
    assert r.status == 403 and r.codes() == ["DENIED"]
    assert alice.request("GET", "/v2/team/app/manifests/v1").status == 200  # nothing changed


def test_mount_from_unreadable_repo_starts_plain_upload(htpasswd: Htpasswd) -> None:
    rules = (AccessRule.from_config({"users": ["alice"], "repositories": ["*"],
                                     "actions": ["*"]}, "a"),
             AccessRule.from_config({"users": ["bob"], "repositories": ["bob/*"],
                                     "actions": ["*"]}, "b"))
    for srv in _serve(authorizer=BasicAuth(htpasswd, AccessPolicy(rules), "r")):
        alice = AuthClient(srv.port, basic("alice", "wonderland"))
        d = alice.push_blob("secret/repo", b"top secret layer")
        bob = AuthClient(srv.port, basic("bob", "builder"))
        r = bob.request("POST", f"/v2/bob/x/blobs/uploads/?mount={d}&from=secret/repo")
        assert r.status == 202  # no mount: the blob is not bob's to read
        assert bob.request("HEAD", f"/v2/bob/x/blobs/{d}").status == 404
        r = alice.request("POST", f"/v2/other/x/blobs/uploads/?mount={d}&from=secret/repo")
        assert r.status == 201


def test_basic_anonymous_read(htpasswd: Htpasswd) -> None:
    for srv in _serve(authorizer=BasicAuth(htpasswd, AccessPolicy(anonymous_read=True), "r")):
        alice = AuthClient(srv.port, basic("alice", "wonderland"))
        img = push_image(alice, "pub/app", "v1")
        anon = AuthClient(srv.port)
        assert anon.request("GET", "/v2/pub/app/manifests/v1").body == img.manifest
        assert anon.request("GET", f"/v2/pub/app/blobs/{sha(img.config)}").body == img.config
        assert anon.request("GET", "/v2/_catalog").json() == {"repositories": ["pub/app"]}
        r = anon.request("POST", "/v2/pub/app/blobs/uploads/")
        assert r.status == 401 and r.headers["www-authenticate"].startswith("Basic ")
        assert anon.request("GET", "/v2/").status == 401  # the ping still challenges


# -- over HTTP: the token flow ---------------------------------------------------------


@pytest.fixture
def token_reg(htpasswd: Htpasswd, keys: dict[str, bytes]) -> Iterator[Server]:
    rules = (AccessRule.from_config({"users": ["alice"], "repositories": ["*"],
                                     "actions": ["*"]}, "a"),
             AccessRule.from_config({"users": ["bob"], "repositories": ["*"],
                                     "actions": ["pull"]}, "b"))
    policy = AccessPolicy(rules)
    key = jwt.load_private_key(keys["pkcs8"])
    issuer = TokenIssuer(htpasswd, policy, key, "test-issuer", "test-service", 60)
    auth = TokenAuth([key.public], issuer="test-issuer", service="test-service", realm=None,
                     policy=policy)
    yield from _serve(authorizer=auth, token_issuer=issuer)


def challenge_params(header: str) -> dict[str, str]:
    scheme, _, rest = header.partition(" ")
    assert scheme == "Bearer"
    out = {}
    for part in rest.split('",'):
        k, _, v = part.partition("=")
        out[k.strip()] = v.strip().strip('"')
    return out


def get_token(c: Client, scope: str, creds: dict[str, str] | None) -> Any:
    return c.request("GET", f"/token?service=test-service&scope={scope}", headers=creds or {})


def test_token_flow_push_and_pull(token_reg: Server) -> None:
    c = AuthClient(token_reg.port)
    r = c.request("GET", "/v2/")
    assert r.status == 401 and r.codes() == ["UNAUTHORIZED"]
    ch = challenge_params(r.headers["www-authenticate"])
    assert ch == {"realm": f"http://127.0.0.1:{token_reg.port}/token",
                  "service": "test-service"}
    r = c.request("POST", "/v2/team/app/blobs/uploads/")
    ch = challenge_params(r.headers["www-authenticate"])
    assert ch["scope"] == "repository:team/app:pull,push"

    t = get_token(c, "repository:team/app:pull,push", basic("alice", "wonderland"))
    assert t.status == 200
    doc = t.json()
    assert doc["token"] == doc["access_token"] and doc["expires_in"] == 60
    claims = json.loads(jwt.unb64url(doc["token"].split(".")[1]))
    assert claims["access"] == [{"type": "repository", "name": "team/app",
                                 "actions": ["pull", "push"]}]
    assert (claims["sub"], claims["aud"], claims["iss"]) == \
        ("alice", "test-service", "test-issuer")
    alice = AuthClient(token_reg.port, bearer(doc["token"]))
    img = push_image(alice, "team/app", "v1")
    assert alice.request("GET", "/v2/team/app/manifests/v1").body == img.manifest
    # the token is for team/app only: another repository needs another token
    r = alice.request("GET", "/v2/other/manifests/v1")
    assert r.status == 401
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
    assert challenge_params(r.headers["www-authenticate"])["scope"] == \
        "repository:other:pull"


def test_token_server_grants_only_what_policy_allows(token_reg: Server) -> None:
    c = AuthClient(token_reg.port)
    alice = AuthClient(token_reg.port, bearer(get_token(
        c, "repository:team/app:pull,push", basic("alice", "wonderland")).json()["token"]))
    push_image(alice, "team/app", "v1")
    t = get_token(c, "repository:team/app:pull,push", basic("bob", "builder")).json()
    claims = json.loads(jwt.unb64url(t["token"].split(".")[1]))
    assert claims["access"] == [{"type": "repository", "name": "team/app",
                                 "actions": ["pull"]}]
    bob = AuthClient(token_reg.port, bearer(t["token"]))
    assert bob.request("GET", "/v2/team/app/manifests/v1").status == 200
    r = bob.request("POST", "/v2/team/app/blobs/uploads/")
    assert r.status == 403 and r.codes() == ["DENIED"]
    # wrong password, unknown service, no credentials (anonymous off), malformed scope
    assert get_token(c, "repository:x:pull", basic("bob", "nope")).status == 401
    assert c.request("GET", "/token?service=elsewhere&scope=repository:x:pull",
                     headers=basic("bob", "builder")).status == 400
    assert get_token(c, "repository:x:pull", None).status == 401
    assert get_token(c, "nonsense", basic("bob", "builder")).status == 400


def test_token_oauth_password_grant(token_reg: Server) -> None:
    c = AuthClient(token_reg.port)
    form = b"grant_type=password&username=alice&password=wonderland&service=test-service" \
           b"&scope=repository%3Ateam%2Fapp%3Apull&client_id=docker&access_type=offline"
    r = c.request("POST", "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200
    token = r.json()["access_token"]
    assert AuthClient(token_reg.port, bearer(token)).request("GET", "/v2/").status == 200
    bad = form.replace(b"wonderland", b"nope")
    assert c.request("POST", "/token", bad).status == 401
    assert c.request("POST", "/token", b"grant_type=refresh_token").status == 400


def test_bearer_rejects_forged_expired_and_foreign_tokens(token_reg: Server,
                                                          keys: dict[str, bytes]) -> None:
    key = jwt.load_private_key(keys["pkcs8"])
    other = jwt.load_private_key(keys["other"])
    now = time.time()
    claims = {"iss": "test-issuer", "aud": "test-service", "sub": "alice", "exp": now + 60,
              "access": [{"type": "repository", "name": "x", "actions": ["pull"]}]}
    ok = AuthClient(token_reg.port, bearer(jwt.encode(claims, key)))
    assert ok.request("GET", "/v2/x/tags/list").status == 404  # authorised; no such repo
    for bad in (jwt.encode(claims, other), jwt.encode(claims | {"exp": now - 600}, key),
                jwt.encode(claims | {"aud": "elsewhere"}, key),
                jwt.encode(claims | {"iss": "elsewhere"}, key), "not.a.token"):
        r = AuthClient(token_reg.port, bearer(bad)).request("GET", "/v2/x/tags/list")
        assert r.status == 401 and r.codes() == ["UNAUTHORIZED"]
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
