"""What a request must be before the app sees it (ASGI middlewares, outermost first):

    SameOriginOnly  Host names the address the request arrived on (or localhost on a loopback
                    address), and Origin, when sent, is that same page: a page of another site,
                    or a DNS name rebound to this machine, is refused (403)
    BodyRules       a POST carries the content type its route takes (JSON, or the image bytes
                    for an upload: both make a browser ask before sending cross-site) and at
                    most its route's bytes; the body is read in full here, refused as soon as it
                    passes the limit (413), before any of it is parsed
    InFlightLimit   at most `limit` POSTs whose body has arrived are served at once; more get
                    429 at once

A slot is taken only once the whole body is in, so a client that goes quiet mid-body holds no
slot; the server's protocol closes any connection whose request has not arrived in full within
its deadline (stable_sam.serve.server). Every refusal is the app's JSON {"error": message}.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass


async def send_error(send, status: int, message: str) -> None:
    """A JSON {"error": message} response. A refused request's unread body is left to the
    protocol, which drops it (closing at once would reset the connection before the client
    reads the message); the request deadline bounds how long that may take."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _split_host(host: str) -> tuple[str, int | None]:
    """'127.0.0.1:8000' -> ('127.0.0.1', 8000); '[::1]:80' -> ('::1', 80); no port -> None.
    Raises ValueError for anything else."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(host)
        port = rest[1:] or None
    else:
        name, _, port = host.partition(":")
        port = port or None
    if port is not None and not (port.isascii() and port.isdigit()):
        raise ValueError(host)
    return name, None if port is None else int(port)


def _host_problem(host: str | None, server) -> str | None:
    """Why `host` does not name the server at `server` = (ip, port) the request arrived on, or
    None when it does. Only an IP address (or localhost) is taken: a DNS name could be rebound
    by another site to this machine, and its pages would then be same-origin with this one."""
    if server is None:  # a Unix socket: no address to compare with
        return None
    address, port = ipaddress.ip_address(server[0].split("%")[0]), server[1]
    if address.version == 6 and address.ipv4_mapped is not None:  # IPv4 on a socket on ::
        address = address.ipv4_mapped
    if not host:
        return "the request has no Host header"
    try:
        name, host_port = _split_host(host)
    except ValueError:
        return f"the Host header {host!r} is not host:port"
    if (80 if host_port is None else host_port) != port:
        return f"the Host header {host!r} names another port than this server's ({port})"
    if name.lower() == "localhost" and address.is_loopback:
        return None
    try:
        named = ipaddress.ip_address(name)
    except ValueError:
        named = None
    if named != address:
        return f"the Host header {host!r} does not name this server's address {address}"
    return None


class SameOriginOnly:
    """ASGI middleware: refuses (403) a request whose Host does not name this server or whose
    Origin is not the page this server served, so only its own page can drive it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _header(scope, b"host")
        problem = _host_problem(host, scope.get("server"))
        origin = _header(scope, b"origin")
        if problem is None and origin is not None and \
                origin.lower() != f"{scope.get('scheme', 'http')}://{host}".lower():
            problem = f"the request comes from the page {origin!r}, not from this server's page"
        if problem is not None:
            problem = problem if len(problem) <= 200 else problem[:197] + "..."  # quotes headers
            await send_error(send, 403, f"{problem}: this server answers only its own page, "
                             "opened at the address `stable-sam serve` printed")
            return
        await self.app(scope, receive, send)


@dataclass(frozen=True)
class BodyRule:
    """What a route's POST body may be: one of `media_types`, at most `max_bytes`; `what` names
    it in the refusal."""

    media_types: tuple[str, ...]
    max_bytes: int
    what: str = "the request body"

    def admits(self, content_type: str | None) -> bool:
        media_type = (content_type or "").split(";")[0].strip().lower()
        return any(media_type == allowed or (allowed.endswith("/*") and
                                             media_type.startswith(allowed[:-1]))
                   for allowed in self.media_types)


def size_text(limit: int) -> str:
    return f"{round(limit / 1024)} KiB" if limit < 2**20 else f"{limit / 2**20:.1f} MiB"


class BodyRules:
    """ASGI middleware: a POST's content type and size by its route (`rules` by path, `default`
    for the others); the body is read here in full and handed on as one message."""

    def __init__(self, app, rules: dict[str, BodyRule], default: BodyRule) -> None:
        self.app = app
        self.rules = rules
        self.default = default

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        rule = self.rules.get(scope["path"], self.default)
        content_type = _header(scope, b"content-type")
        if not rule.admits(content_type):
            await send_error(send, 415, f"POST {scope['path']} takes Content-Type "
                             f"{' or '.join(rule.media_types)}, not {content_type!r}")
            return
        too_big = f"{rule.what} is over the server's limit of {size_text(rule.max_bytes)}"
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > rule.max_bytes:
            await send_error(send, 413, too_big)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left (or the server's deadline closed it): no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > rule.max_bytes:
                await send_error(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only a disconnect can come

        await self.app(scope, replay, send)


class InFlightLimit:
    """ASGI middleware: answers 429 to a POST when `limit` POSTs are already being served."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0  # touched only on the event loop's thread

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await send_error(send, 429, f"the server is busy ({self.in_flight} requests in "
                             "progress): try again in a moment")
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
