"""`GET /avatars/{name}.png`: the agents' avatar files, for the webhook that speaks as an
agent (Discord fetches them from `webhooks.public_url`).

Served by file name, never by agent id: each avatar version is written under a random
name (bot/core/avatars), so a URL can't be guessed from a sequential id (a DM user's
private agent stays private), and a regenerated avatar has a new URL, which is what
makes Discord fetch it again instead of showing its cached copy. No database is needed,
so the standalone sidecar serves them too."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

# A random name: 24 url-safe characters now; 14 and up accepts the `{id}-{12 hex}`
# names written before (48 random bits), until those avatars are next replaced.
NAME = r"[A-Za-z0-9_-]{14,64}"


def avatar_routes(folder: Path) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get(r"/avatars/{name:" + NAME + r"}.png")
    async def avatar(request: web.Request) -> web.StreamResponse:
        path = folder / f"{request.match_info['name']}.png"
        if not path.is_file():
            raise web.HTTPNotFound()
        # A name is never reused for other content: cache it as long as anyone likes.
        return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})

    return routes


def avatar_url(public_url: str, path: Path) -> str:
    return f"{public_url.rstrip('/')}/avatars/{path.name}"
