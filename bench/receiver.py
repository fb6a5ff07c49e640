"""A minimal, fast webhook receiver for the outbox bench, run in its own process
(``python -m bench.receiver PORT``): asyncio on uvloop, HTTP/1.1 keep-alive, answers every
POST ``204`` at once and counts them; ``GET`` answers the count (JSON). It parses no more
than it must (the request head and ``Content-Length``), so the relay, not the receiver, is
what the figure measures."""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop

_count = 0


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    global _count
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if head.startswith(b"POST"):
                _count += 1
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            else:
                body = json.dumps({"received": _count}).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\n\r\n".encode()
                    + body
                )
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1])))
