"""The main job: a real playbook through `ansible-runner run` with our plugin, publishing to a
nats-server this script starts itself, and what arrived, compared with the run's artifacts.

Run it with `make demo` (which installs the pinned tools and builds the plugin first).
"""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
EXAMPLE = ROOT / "python" / "examples" / "demo"
SUBJECT_ID = "demo"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nats-server did not listen on port {port} within {timeout}s")


class Subscriber:
    """An independent nats-py subscriber on its own thread and event loop."""

    def __init__(self, url, subject):
        self.messages = []
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.url, self.subject = url, subject
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        import nats

        self.nc = await nats.connect(self.url)

        async def on_msg(msg):
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()
            show(msg)

        await self.nc.subscribe(self.subject, cb=on_msg)
        await self.nc.flush()

    def wait_for(self, n, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return list(self.messages)

    def close(self):
        asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def show(msg):
    data = json.loads(msg.data)
    kind = msg.subject.rsplit(".", 1)[-1]
    if kind == "status":
        line = f"status  {data.get('status')}"
    else:
        host = (data.get("event_data") or {}).get("host") or ""
        task = (data.get("event_data") or {}).get("task") or ""
        line = f"event   #{data.get('counter', '?'):<3} {data.get('event', '?'):<28} {host:<6} {task}"
    print(f"{msg.subject:<58} {len(msg.data):>6} B  {line}", flush=True)


def main():
    nats_server = VENV_BIN / "nats-server"
    if not nats_server.exists():
        raise SystemExit(f"{nats_server} not found: run `make setup`")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="arn-demo-"))
    server = subprocess.Popen(
        [str(nats_server), "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sub = None
    try:
        wait_port(port)
        print(f"nats-server {url} (pid {server.pid}); subscribing to pub.ansible.runner.>\n")
        sub = Subscriber(url, "pub.ansible.runner.>")
        private = workdir / "demo"
        shutil.copytree(EXAMPLE, private)
        env = dict(os.environ)
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            RUNNER_NATS_SUBJECT_ID=SUBJECT_ID,
            RUNNER_NATS_SERVERS=url,
            RUNNER_NATS_HEADERS="producer=ansible-runner-nats-rs",
            ANSIBLE_PYTHON_INTERPRETER=str(VENV_BIN / "python"),
        )
        started = time.monotonic()
        run = subprocess.run(
            [str(VENV_BIN / "ansible-runner"), "run", str(private), "-p", "site.yml",
             "--ident", "demo-run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        took = time.monotonic() - started
        if run.stderr.strip():
            print("\nansible-runner stderr:\n" + run.stderr)
        events_dir = private / "artifacts" / "demo-run" / "job_events"
        files = sorted(events_dir.glob("*.json"))
        expected = len(files) + 3  # + starting, running and the terminal status
        got = sub.wait_for(expected, timeout=10)
        status = (private / "artifacts" / "demo-run" / "status").read_text().strip()
        by_uuid = {}
        for m in got:
            if m.subject.endswith(".event"):
                by_uuid.setdefault(json.loads(m.data).get("uuid"), []).append(m)
        matched = sum(
            1
            for f in files
            if len(by_uuid.get(json.loads(f.read_text())["uuid"], [])) == 1
            and json.loads(by_uuid[json.loads(f.read_text())["uuid"]][0].data)
            == json.loads(f.read_text())
        )
        statuses = [json.loads(m.data)["status"] for m in got if m.subject.endswith(".status")]
        print(
            f"\nplaybook: {status}, rc {run.returncode}, {took:.1f} s\n"
            f"arrived: {len(got)} messages ({len(got) - len(statuses)} events, statuses {statuses})\n"
            f"job_events artifacts: {len(files)}; {matched} of them arrived exactly once with equal JSON"
        )
        ok = matched == len(files) and len(got) == expected
        print("all events delivered" if ok else "MISMATCH: see above")
        return 0 if ok else 1
    finally:
        if sub is not None:
            sub.close()
        server.kill()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
