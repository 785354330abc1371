"""What the Python benchmarks share: a nats-server of their own and a counting subscriber."""

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
# The Python plugin lives beside, not among, the virtualenv's packages (`make peer`): installed
# there, its entry point (also named `nats`) would be loaded by every ansible-runner of the tests.
PEER_DEPS = ROOT / ".venv" / "peer"

# nats-server is started the way the end-to-end tests start it (on a port it picks itself).
sys.path.insert(0, str(ROOT / "python" / "tests"))
from e2e_support import start_nats_server  # noqa: E402


class Server(NamedTuple):
    """A running nats-server: its URL and process id."""

    url: str
    pid: int


@contextmanager
def nats_server():
    """Yields a fresh nats-server (a `Server`) on a loopback port of its own choosing."""
    with tempfile.TemporaryDirectory(prefix="arn-bench-nats-") as tmp:
        server, ports = start_nats_server([], tmp)
        try:
            yield Server(ports["nats"][0], server.pid)
        finally:
            server.kill()
            server.wait()


def cpu_seconds(pid):
    """The CPU time the live threads of process `pid` have used so far (Linux: the sum of
    /proc/<pid>/task/*/schedstat). Only for processes whose threads outlive what is
    measured (nats-server, the counter): the time of a thread that ended is not in it."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return total / 1e9


COUNTER = ROOT / "bench" / "target" / "release" / "arn-bench"


class Counter:
    """An independent subscriber in its own process (`arn-bench count`: the protocol over a
    plain socket, none of our library's code), so that it takes no GIL from what is
    measured and as little CPU as a subscriber can from the cores it shares with the
    publisher and the server: a slow counter would put a floor under every figure. It
    counts silently and answers once, when asked by `wait`, with the system-clock time of
    the last arrival; the start is read from the same clock here, so how late the counter
    would have read a start mark is not part of the time."""

    def __init__(self, url, subject):
        if not COUNTER.exists():
            raise SystemExit(f"{COUNTER} missing: run `make bench` (it builds it)")
        self.proc = subprocess.Popen([str(COUNTER), "count", url, subject],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the counting subscriber did not start")
        self.started = time.time()

    def start(self):
        """Marks the start of the measured work."""
        self.started = time.time()

    def wait(self, n, timeout, quiet=None):
        """Waits until `n` messages arrived, `timeout` passed or, if given, `quiet` seconds
        went by without a message. Returns the count and the seconds from `start` until the
        last message arrived (0 if none did). Fails if the counter's own connection had a
        problem: its count would not be the publisher's."""
        quiet = "" if quiet is None else f" {quiet}"
        self.proc.stdin.write(f"wait {n} {timeout}{quiet}\n")
        self.proc.stdin.flush()
        count, last, problems = self.proc.stdout.readline().split()
        if int(problems):
            raise RuntimeError(f"the counting subscriber's connection had {problems} problems "
                               "(disconnects, slow consumer): its count is not a measure")
        took = max(float(last) - self.started, 0.0) if int(count) else 0.0
        return int(count), took

    def cpu(self):
        """The counter's CPU time so far (seconds)."""
        return cpu_seconds(self.proc.pid)

    def close(self):
        self.proc.kill()
        self.proc.wait()
