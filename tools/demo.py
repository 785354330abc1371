"""The main job: a real playbook through `ansible-runner run` with our plugin, publishing to a
nats-server this script starts itself, and what arrived, compared with the run's artifacts.

Run it with `make demo` (which installs the pinned tools and builds the plugin first).
"""

import asyncio
import json
import os
import shutil
import signal
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
RUN_TIMEOUT = 300  # seconds: the playbook takes a few
STOP_GRACE = 15  # seconds ansible-runner gets to cancel its playbook before it is killed

# nats-server is started the way the end-to-end tests start it (on a port it picks itself).
sys.path.insert(0, str(ROOT / "python" / "tests"))
from e2e_support import NatsServerError, start_nats_server, subscribe_confirmed  # noqa: E402

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def on_signal(signum, _frame):
    """Ctrl-C, SIGTERM and SIGHUP become a normal exit, so that every `finally` below runs."""
    print(f"\ndemo: {signal.Signals(signum).name}, cleaning up", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def cleaning_up():
    """Once cleanup has begun, a second signal must not cut it short (it is bounded)."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Subscriber:
    """An independent nats-py subscriber on its own thread and event loop."""

    def __init__(self, url, subject):
        self.messages = []
        self.cond = threading.Condition()
        self.ready = threading.Event()
        self.url, self.subject = url, subject
        self.closing = False
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self):
        import nats

        # One line per problem (nats-py's default is a traceback), none for our own close().
        async def on_error(e):
            if not self.closing:
                print(f"subscriber: {type(e).__name__}: {e}", file=sys.stderr, flush=True)

        async def on_disconnected():
            if not self.closing:
                print("subscriber: disconnected", file=sys.stderr, flush=True)

        self.nc = await nats.connect(self.url, error_cb=on_error, disconnected_cb=on_disconnected)

        async def on_msg(msg):
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()
            show(msg)

        await subscribe_confirmed(self.nc, self.subject, on_msg)

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
        self.closing = True
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
    for sig in SIGNALS:
        signal.signal(sig, on_signal)
    if not (VENV_BIN / "nats-server").exists():
        raise SystemExit(f"{VENV_BIN / 'nats-server'} not found: run `make setup`")
    workdir = Path(tempfile.mkdtemp(prefix="arn-demo-"))
    try:
        try:
            server, ports = start_nats_server([], workdir / "nats", new_session=True)
        except NatsServerError as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1
        try:
            return demo(workdir, ports["nats"][0], server.pid)
        finally:
            cleaning_up()
            server.kill()
            server.wait()
    finally:
        cleaning_up()
        shutil.rmtree(workdir, ignore_errors=True)


def demo(workdir, url, server_pid):
    print(f"nats-server {url} (pid {server_pid}); subscribing to pub.ansible.runner.>\n")
    sub = run = None
    try:
        sub = Subscriber(url, "pub.ansible.runner.>")
        private = workdir / "demo"
        shutil.copytree(EXAMPLE, private)
        # The user's own RUNNER_NATS_* settings are not the demo's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_NATS_")}
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env.update(
            RUNNER_NATS_SUBJECT_ID=SUBJECT_ID,
            RUNNER_NATS_SERVERS=url,
            RUNNER_NATS_HEADERS="producer=ansible-runner-nats-rs",
            ANSIBLE_PYTHON_INTERPRETER=str(VENV_BIN / "python"),
        )
        stderr_path = workdir / "ansible-runner.stderr"
        started = time.monotonic()
        with open(stderr_path, "wb") as stderr:
            # Its own session: a signal reaches it only through us (terminate below), which
            # ansible-runner answers by canceling the playbook and ending its processes.
            run = subprocess.Popen(
                [str(VENV_BIN / "ansible-runner"), "run", str(private), "-p", "site.yml",
                 "--ident", "demo-run"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        try:
            rc = run.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"demo: ansible-runner did not finish within {RUN_TIMEOUT} s", file=sys.stderr)
            return 1
        took = time.monotonic() - started
        err = stderr_path.read_text(errors="replace").strip()
        if err:
            print("\nansible-runner stderr:\n" + err)
        artifacts = private / "artifacts" / "demo-run"
        files = sorted((artifacts / "job_events").glob("*.json"))
        status_file = artifacts / "status"
        status = status_file.read_text().strip() if status_file.exists() else "no status written"
        expected = len(files) + 3  # + starting, running and the terminal status
        got = sub.wait_for(expected, timeout=10 if files else 2)
        events = {json.loads(f.read_text())["uuid"]: json.loads(f.read_text()) for f in files}
        by_uuid = {}
        for m in got:
            if m.subject.endswith(".event"):
                by_uuid.setdefault(json.loads(m.data).get("uuid"), []).append(json.loads(m.data))
        matched = sum(1 for uuid, event in events.items() if by_uuid.get(uuid) == [event])
        statuses = [json.loads(m.data)["status"] for m in got if m.subject.endswith(".status")]
        print(
            f"\nplaybook: {status}, rc {rc}, {took:.1f} s\n"
            f"arrived: {len(got)} messages ({len(got) - len(statuses)} events, statuses {statuses})\n"
            f"job_events artifacts: {len(files)}; {matched} of them arrived exactly once with equal JSON"
        )
        ok = rc == 0 and bool(files) and matched == len(files) and len(got) == expected
        print("all events delivered" if ok else "MISMATCH: see above")
        return 0 if ok else 1
    finally:
        cleaning_up()
        if run is not None and run.poll() is None:
            run.terminate()
            try:
                run.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                run.kill()
                run.wait()
        if sub is not None:
            try:
                sub.close()
            except Exception as e:  # the server is stopped next either way
                print(f"subscriber: close: {type(e).__name__}: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
