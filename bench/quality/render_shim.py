#!/usr/bin/env python3
"""Render shim: gives shardgate-sim the vLLM `/v1/chat/completions/render` and
`/v1/completions/render` endpoints that vllm-router's `cache_aware` policy calls on HTTP
workers to get a prompt's token ids (without them every decision falls back to
"missing_tokens" and cache_aware is not cache-aware). One process, one listener per sim:
the render endpoints are answered here (token ids = crc32 of each whitespace-separated
word of the sim's prompt: per message, the role then the content), everything else is
proxied to the sim byte for byte, streaming.

    render_shim.py LISTEN_PORT=SIM_PORT [LISTEN_PORT=SIM_PORT ...]

Only 127.0.0.1. Used by run.py for the `vllm-router:cache_aware:shim` rows only.
"""

import asyncio
import sys
import zlib

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
       "content-encoding"}


def prompt_words(body: dict) -> list[str]:
    if "messages" in body:
        out: list[str] = []
        for m in body["messages"]:
            out.append(str(m.get("role", "")))
            c = m.get("content") or ""
            if isinstance(c, list):
                c = " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            out += str(c).split()
        return out
    p = body.get("prompt", "")
    if isinstance(p, list):
        p = " ".join(map(str, p))
    return str(p).split()


def make_app(sim: str, session_box: list) -> web.Application:
    async def render(req: web.Request) -> web.Response:
        body = await req.json()
        ids = [zlib.crc32(w.encode()) & 0x7FFFFFFF for w in prompt_words(body)]
        return web.json_response({"token_ids": ids, "prompt_token_ids": ids,
                                  "model": body.get("model")})

    async def proxy(req: web.Request) -> web.StreamResponse:
        data = await req.read()
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP}
        async with session_box[0].request(req.method, sim + req.path_qs, data=data,
                                          headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP})
            await resp.prepare(req)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions/render", render)
    app.router.add_post("/v1/completions/render", render)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


async def main(pairs: list[tuple[int, int]]) -> None:
    session_box: list = [aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None))]
    runners = []
    for listen, sim_port in pairs:
        r = web.AppRunner(make_app(f"http://127.0.0.1:{sim_port}", session_box),
                          access_log=None)
        await r.setup()
        await web.TCPSite(r, "127.0.0.1", listen).start()
        runners.append(r)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ps = [tuple(int(x) for x in a.split("=")) for a in sys.argv[1:]]
    asyncio.run(main(ps))
