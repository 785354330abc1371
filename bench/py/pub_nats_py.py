"""nats-py's publish throughput, for the table printed by `arn-bench`.

    pub_nats_py.py <url> <payload bytes> <messages> <runs>

Publishes N messages on one connection, then flushes (PING/PONG), like every other row;
prints the best time in seconds and the CPU time of this process during that run.
"""

import asyncio
import sys
import time

import nats


async def once(url, payload, n):
    nc = await nats.connect(url)
    try:
        publish = nc.publish
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await publish("bench", payload)
        await nc.flush(timeout=120)
        return time.perf_counter() - start, time.process_time() - cpu
    finally:
        await nc.close()


async def main(url, size, n, runs):
    payload = b"x" * size
    took, cpu = min([await once(url, payload, n) for _ in range(runs)])
    print(f"{took:.6f} {cpu:.6f}")


if __name__ == "__main__":
    url, size, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    asyncio.run(main(url, size, n, runs))
