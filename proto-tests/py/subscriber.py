"""Independent NATS subscriber for the proto-tests harness (nats-py).

Usage: subscriber.py '<json options>'

Options (all but "servers" and "subject" optional):
  servers, subject, queue, name, no_echo, user, password, token,
  jwt (user JWT: signs nonces through the parent), nkey (public nkey: ditto),
  ca_file, cert_file, key_file, tls_hostname, tls_first, reconnect.

Prints one JSON line per event on stdout:
  {"ready": true}                  once the server has the SUB
  {"msg": {"subject", "reply", "status", "headers": [[k, v], ...],
           "raw_headers_b64", "payload_b64"}}
  {"sign": "<nonce>"}              asks the parent to sign; the parent answers
                                   one line {"sig": "<base64url>"} on stdin
  {"event": "..."}                 connection events and errors
  {"fatal": "..."}                 then exits 1

Headers come from the raw header block (kept in wire order, duplicates kept),
not from nats-py's dict, which keeps only the last value of a repeated name.
"""

import asyncio
import base64
import json
import ssl
import sys
from pathlib import Path

from nats.aio.client import Client

# A flush after a subscribe that proves the server has the SUB, shared with the plugin tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "python" / "tests"))
from e2e_support import subscribe_confirmed  # noqa: E402


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def parse_raw_headers(raw):
    """Returns (status line, [[name, value], ...]) from a raw NATS/1.0 block."""
    if not raw:
        return None, []
    lines = bytes(raw).split(b"\r\n")
    status = lines[0].decode("utf-8", "replace")
    out = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        out.append([name.decode("utf-8", "replace"), value.strip(b" \t").decode("utf-8", "replace")])
    return status, out


class RawHeaderClient(Client):
    """Keeps the raw header bytes of each message on the Msg object.

    The parser awaits _process_msg for one message at a time, and
    _build_message runs inside it, so the stash cannot be interleaved.
    """

    async def _process_msg(self, sid, subject, reply, data, headers):
        self._proto_tests_raw = headers
        try:
            await super()._process_msg(sid, subject, reply, data, headers)
        finally:
            self._proto_tests_raw = None

    def _build_message(self, sid, subject, reply, data, headers):
        msg = super()._build_message(sid, subject, reply, data, headers)
        if msg is not None:
            msg._proto_tests_raw = getattr(self, "_proto_tests_raw", None)
        return msg


def sign_via_parent(nonce):
    emit({"sign": nonce})
    line = sys.stdin.readline()
    if not line:
        raise RuntimeError("parent closed stdin while signing")
    return json.loads(line)["sig"].encode()


async def main():
    opts = json.loads(sys.argv[1])
    nc = RawHeaderClient()

    async def error_cb(e):
        emit({"event": "error: %r" % (e,)})

    async def disconnected_cb():
        emit({"event": "disconnected"})

    async def reconnected_cb():
        emit({"event": "reconnected to %s" % (nc.connected_url,)})

    kwargs = dict(
        servers=opts["servers"],
        name=opts.get("name") or "proto-tests-pysub",
        no_echo=bool(opts.get("no_echo")),
        allow_reconnect=opts.get("reconnect", True),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        connect_timeout=5,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
    )
    if opts.get("user") is not None:
        kwargs["user"] = opts["user"]
        kwargs["password"] = opts.get("password") or ""
    if opts.get("token") is not None:
        kwargs["token"] = opts["token"]
    if opts.get("jwt"):
        jwt = opts["jwt"].encode()
        kwargs["user_jwt_cb"] = lambda: jwt
        kwargs["signature_cb"] = sign_via_parent
    elif opts.get("nkey"):
        kwargs["signature_cb"] = sign_via_parent
        # nats-py sends "nkey" from this field; it is only set from a seed otherwise.
        nc._public_nkey = opts["nkey"]
    if opts.get("ca_file") or opts.get("cert_file") or opts.get("tls_first"):
        ctx = ssl.create_default_context(cafile=opts.get("ca_file"))
        if opts.get("cert_file"):
            ctx.load_cert_chain(opts["cert_file"], opts.get("key_file"))
        kwargs["tls"] = ctx
        kwargs["tls_hostname"] = opts.get("tls_hostname") or "localhost"
        if opts.get("tls_first"):
            kwargs["tls_handshake_first"] = True

    try:
        await nc.connect(**kwargs)
    except Exception as e:  # noqa: BLE001 - report everything to the parent
        emit({"fatal": "connect failed: %r" % (e,)})
        sys.exit(1)

    async def cb(msg):
        raw = getattr(msg, "_proto_tests_raw", None)
        status, headers = parse_raw_headers(raw)
        if raw is None and msg.headers:
            headers = [[k, v] for k, v in msg.headers.items()]
        emit(
            {
                "msg": {
                    "subject": msg.subject,
                    "reply": msg.reply or None,
                    "status": status,
                    "headers": headers,
                    "raw_headers_b64": base64.b64encode(bytes(raw)).decode() if raw else None,
                    "payload_b64": base64.b64encode(msg.data).decode(),
                }
            }
        )

    await subscribe_confirmed(
        nc, opts["subject"], cb, queue=opts.get("queue") or "", flush_timeout=5
    )
    emit({"ready": True})
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
