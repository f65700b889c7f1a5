#!/usr/bin/env python3
"""Opens N connections to a RESP server, sends one PING on each and reads the +PONG, then
holds them open until stdin closes. Prints "ready N" once every connection has answered.
With a third argument PATH, the server is an HTTP one: each connection sends one keep-alive
GET of PATH instead and reads the whole 200 answer. Used by loadtest/idle_memory.sh;
standard library only."""
import asyncio
import sys


async def one(port, path, conns):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if path is None:
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await reader.readline()
        if line != b"+PONG\r\n":
            raise RuntimeError(f"unexpected reply {line!r}")
    else:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: idle\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(f"unexpected answer {head[:40]!r}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        await reader.readexactly(length)
    conns.append(writer)


async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    path = sys.argv[3] if len(sys.argv) > 3 else None
    conns = []
    sem = asyncio.Semaphore(500)  # bounded concurrency while connecting

    async def guarded():
        async with sem:
            await one(port, path, conns)

    await asyncio.gather(*(guarded() for _ in range(n)))
    print(f"ready {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in conns:
        w.close()


asyncio.run(main())
