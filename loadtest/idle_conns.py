#!/usr/bin/env python3
"""Opens N connections to a RESP server, sends one PING on each and reads the +PONG, then
holds them open until stdin closes. Prints "ready N" once every connection has answered.
Used by loadtest/idle_memory.sh; standard library only."""
import asyncio
import sys


async def one(port, conns):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"PING\r\n")
    await writer.drain()
    line = await reader.readline()
    if line != b"+PONG\r\n":
        raise RuntimeError(f"unexpected reply {line!r}")
    conns.append(writer)


async def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    conns = []
    sem = asyncio.Semaphore(500)  # bounded concurrency while connecting

    async def guarded():
        async with sem:
            await one(port, conns)

    await asyncio.gather(*(guarded() for _ in range(n)))
    print(f"ready {len(conns)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in conns:
        w.close()


asyncio.run(main())
