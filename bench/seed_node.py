"""A seed-style topology node for benchmarks: a Flask app that calls its backends with
aiohttp, as the App Mesh load-test walkthrough's request handler does. GET / answers 200
when every backend answered 200, else 500; no backends answers 200.

Usage: BACKENDS=http://127.0.0.1:9081/,http://127.0.0.1:9082/ python3 seed_node.py PORT
"""
import asyncio
import os
import sys

import aiohttp
from flask import Flask

app = Flask(__name__)
BACKENDS = [b.strip() for b in os.environ.get("BACKENDS", "").split(",") if b.strip()]
BACKENDS = [b if "://" in b else f"http://{b}/" for b in BACKENDS]


async def call(session, url):
    try:
        async with session.get(url) as resp:
            await resp.read()
            return resp.status == 200
    except aiohttp.ClientError:
        return False


@app.route("/")
async def handle():
    if not BACKENDS:
        return "ok", 200
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(call(session, b) for b in BACKENDS))
    return ("ok", 200) if all(results) else ("backend failed", 500)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]), threaded=True)
