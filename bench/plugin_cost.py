"""Plugin cost per event: ours (ansible-runner-nats-rs) against the Python
`ansible-runner-nats` 0.4.0, both imported into this one process and driven the same way:
status_handler(starting), N x event_handler, status_handler(successful), with an
independent nats-py subscriber counting what arrived. Run by `make bench`.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "python" / "tests" / "fixtures"


class Config:
    """What the handlers read of ansible-runner's RunnerConfig."""

    def __init__(self, ident):
        self.ident = ident
        self.settings = {}


COUNTER_SCRIPT = """
import asyncio, sys, nats
async def main(url, subject):
    nc = await nats.connect(url, pending_size=256 * 1024 * 1024)
    n = 0
    async def on_msg(msg):
        nonlocal n
        n += 1
        print(n, flush=True)
    await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=10_000_000,
                       pending_bytes_limit=4 * 1024 * 1024 * 1024)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


class Counter:
    """An independent nats-py subscriber in its own process, so that it takes no time from
    the handlers being measured (in-process, it would compete for the GIL)."""

    def __init__(self, url, subject):
        self.n = 0
        self.cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, "-c", COUNTER_SCRIPT, url, subject],
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the counting subscriber did not start")
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.n = int(line)
                self.cond.notify_all()

    def wait(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.n < n and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            return self.n

    def close(self):
        self.proc.kill()
        self.proc.wait()


def run(plugin, url, event, n, label):
    ident = f"{label}-{uuid.uuid4().hex[:8]}"
    os.environ["RUNNER_NATS_SUBJECT_ID"] = label
    os.environ["RUNNER_NATS_SERVERS"] = url
    counter = Counter(url, f"pub.ansible.runner.{label}.{ident}.>")
    config = Config(ident)
    events = []
    for i in range(n):
        e = dict(event, uuid=str(uuid.uuid4()), counter=i + 1, runner_ident=ident)
        events.append(e)
    start = time.perf_counter()
    plugin.status_handler(config, {"status": "starting", "runner_ident": ident})
    t0 = time.perf_counter()
    for e in events:
        plugin.event_handler(config, e)
    calls = time.perf_counter() - t0
    plugin.status_handler(config, {"status": "successful", "runner_ident": ident})
    # The Python plugin may lose messages: wait for all, but not forever.
    got = counter.wait(n + 2, timeout=30 if n < 5000 else 90)
    total = time.perf_counter() - start
    counter.close()
    return calls / n * 1e6, total / n * 1e6, got


def main():
    # The Python plugin lives beside, not in, the project virtualenv: installed there, its
    # entry point would be loaded by every ansible-runner of the tests too.
    sys.path.insert(0, str(ROOT / "bench" / ".deps"))
    import ansible_runner_nats as python_plugin
    import ansible_runner_nats_rs as ours

    nats_server = ROOT / ".venv" / "bin" / "nats-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(nats_server), "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
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
        fixtures = {
            "1.4 KB": json.loads((FIXTURES / "event_item.json").read_text()),
            "38 KB": json.loads((FIXTURES / "event_loop60.json").read_text()),
        }
        print("## Plugin cost per event (µs; both plugins in one process, one server, a subscriber process counting)\n")
        print("| event | N | ours: per call | Python: per call | ratio | ours: until all arrived "
              "| Python: until all arrived | ratio | delivered ours | delivered Python |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, event in fixtures.items():
            for n in (1000, 10000):
                o_call, o_total, o_got = run(ours, url, event, n, "rs")
                p_call, p_total, p_got = run(python_plugin, url, event, n, "py")
                print(f"| {name} | {n} | {o_call:.1f} | {p_call:.1f} | {p_call / o_call:.1f}x "
                      f"| {o_total:.1f} | {p_total:.1f} | {p_total / o_total:.1f}x "
                      f"| {o_got} of {n + 2} | {p_got} of {n + 2} |", flush=True)
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
