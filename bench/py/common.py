"""What the Python benchmarks share: a nats-server of their own and a counting subscriber."""

import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The Python plugin lives beside, not in, the project virtualenv: installed there, its
# entry point (also named `nats`) would be loaded by every ansible-runner of the tests too.
PEER_DEPS = ROOT / "bench" / ".deps"


@contextmanager
def nats_server():
    """Yields the URL of a fresh nats-server on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = ROOT / ".venv" / "bin" / "nats-server"
    server = subprocess.Popen([str(binary), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()


COUNTER_SCRIPT = """
import asyncio, sys, nats
async def main(url, subject):
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    n = 0
    target = None
    reached = asyncio.Event()
    async def on_msg(msg):
        nonlocal n
        n += 1
        if target is not None and n >= target:
            reached.set()
    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=10_000_000,
                       pending_bytes_limit=4 * 1024 * 1024 * 1024)
    await nc.flush()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    want, timeout = line.split()
    target = int(want)
    if n >= target:
        reached.set()
    try:
        await asyncio.wait_for(reached.wait(), float(timeout))
    except asyncio.TimeoutError:
        pass
    print(n, flush=True)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class Counter:
    """An independent nats-py subscriber in its own process, so that it takes no time from
    what is measured (in-process, it would compete for the GIL). It counts silently and
    answers once, when asked by `wait`, so that counting costs no more than receiving."""

    def __init__(self, url, subject):
        self.proc = subprocess.Popen([sys.executable, "-c", COUNTER_SCRIPT, url, subject],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the counting subscriber did not start")

    def wait(self, n, timeout):
        """Waits until `n` messages arrived or `timeout` passed; returns the count."""
        self.proc.stdin.write(f"{n} {timeout}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self):
        self.proc.kill()
        self.proc.wait()
