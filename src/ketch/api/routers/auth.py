"""``POST /auth``: check registry credentials (``docker login``).

The body is an ``AuthConfig`` (``username``, ``password``, ``serveraddress``,
optionally ``identitytoken``); the engine tries them against the registry. The answer
is dockerd's: ``{"Status": "Login Succeeded", "IdentityToken": ""}``; wrong credentials
are a 401 whose message the docker CLI prints as it is (``login attempt to
http://HOST/v2/ failed with status: 401 Unauthorized``). Nothing is stored by the daemon:
the client keeps the credentials.
"""

from __future__ import annotations

import asyncio
import json
from typing import Protocol

from ketch.api.httpstatus import json_response
from ketch.api.router import Route
from ketch.errors import InvalidArgument
from ketch.httpserver import Request, Response

__all__ = ["AuthBackend", "AuthRouter"]


class AuthBackend(Protocol):
    """What the auth router needs (``ketch.engine.images.ImageService``)."""

    def login(self, username: str, password: str, server: str = "",
              identity_token: str = "") -> dict[str, str]: ...


class AuthRouter:
    def __init__(self, backend: AuthBackend) -> None:
        self.backend = backend

    def routes(self) -> list[Route]:
        return [Route("POST", "/auth", self.auth)]

    async def auth(self, request: Request) -> Response:
        try:
            body = json.loads(request.body or b"{}")
        except ValueError as e:
            raise InvalidArgument(f"invalid auth configuration: {e}") from None
        if not isinstance(body, dict):
            raise InvalidArgument("invalid auth configuration: want a JSON object")
        answer = await asyncio.to_thread(
            self.backend.login, str(body.get("username") or ""),
            str(body.get("password") or ""), str(body.get("serveraddress") or ""),
            str(body.get("identitytoken") or ""))
        return json_response(answer)
