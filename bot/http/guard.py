"""Limits that keep slow or hostile clients from exhausting the sidecar, and with it
the process (in `run`, the Discord bot shares its file table and event loop).

- Headers: a connection must send a whole request head within `header_timeout`
  (aiohttp's keep-alive timer, armed when the connection opens, closes it otherwise).
- Bodies: read within `body_timeout` or 408.
- Connections: at most `max_connections` at once, and never more than half the
  process's file-descriptor limit. When full, the oldest connection still waiting for
  its request head is closed to make room (a slow-header attack evicts itself, a real
  client that sends its request at once gets through); if every connection is busy with
  a request, the newcomer is answered 503 at once.
- Accepting: asyncio accepts up to `backlog` sockets at a time before any of them
  reaches the count above, so the backlog is kept small beside the limit; connections
  beyond it wait in the kernel, where they cost the process no descriptor.
- Logging: refusals and evictions are counted, and said once a minute at most; so is
  an accept that fails for want of descriptors (asyncio logs a traceback for each).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler

from bot.logs import Throttle

log = logging.getLogger(__name__)

_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: close\r\n\r\nbusy\n"
)


def connection_limit(configured: int) -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft // 2))


def accept_backlog(limit: int) -> int:
    return max(4, min(128, limit // 8))


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_REFUSAL)
        transport.close()


@dataclass
class ConnectionGuard:
    limit: int
    body_timeout: float
    refused: int = 0
    evicted: int = 0
    _started: set[RequestHandler] = field(default_factory=set)
    _say: Throttle = field(default_factory=lambda: Throttle(60.0))

    def factory(self, server: web.Server) -> asyncio.Protocol:
        """The protocol for a new connection: aiohttp's, or a refusal."""
        # A closed connection stays listed until its handler task ends: count live ones.
        live = [h for h in server.connections if h.transport is not None]
        if len(live) >= self.limit:
            self._started.intersection_update(live)
            waiting = [h for h in live if h not in self._started]
            if waiting:
                waiting[0].force_close()  # the oldest still sending its request head
                self.evicted += 1
                self._report("closed the oldest connection still sending its headers")
            else:
                self.refused += 1
                self._report("refused a connection, all of them busy with a request")
                return _Refused()
        return server()

    def _report(self, what: str) -> None:
        if self._say.allow("limit") is not None:
            log.warning(
                "sidecar at its connection limit (%d): %s (evicted %d, refused %d so far)",
                self.limit,
                what,
                self.evicted,
                self.refused,
            )

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self._started.add(request.protocol)
        if request.body_exists:
            try:
                async with asyncio.timeout(self.body_timeout):
                    await request.read()  # cached: the handler's read() returns it
            except TimeoutError:
                return _closing({"error": "body too slow"}, 408)
            except web.HTTPRequestEntityTooLarge:
                return _closing({"error": "body too large"}, 413)
        return await handler(request)


def _closing(body: dict[str, str], status: int) -> web.Response:
    """A refusal that also ends the connection: the rest of its body is never read, and a
    slow client must not keep the connection until the keep-alive timer ends it."""
    response = web.json_response(body, status=status)
    response.force_close()
    return response


class GuardedSite(web.TCPSite):
    """A TCPSite whose connections go through a ConnectionGuard."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard
    ) -> None:
        super().__init__(runner, host, port)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: self.guard.factory(server),
            self._host,
            self._port,
            backlog=accept_backlog(self.guard.limit),
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )


_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs each failed accept with a traceback, many times a second while the
    descriptors are exhausted: say it once a minute instead, without the traceback."""
    say = Throttle(60.0)
    default = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in _OUT_OF_RESOURCES:
            held = say.allow("accept")
            if held is not None:
                log.error(
                    "cannot accept connections: %s (%d more since the last line); "
                    "raise the file limit (LimitNOFILE) or lower webhooks.max_connections",
                    error.strerror,
                    held,
                )
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
