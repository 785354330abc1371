"""The test support's own assumptions about nats-py, checked on the wire."""
import asyncio
import socket
import threading

from e2e_support import subscribe_confirmed

INFO = b'INFO {"server_id":"fake","version":"2.10.0","proto":1,"max_payload":1048576}\r\n'


def ops_on_the_wire(subscribe):
    """The operations a nats-py client sends to a fake server (which answers each PING)
    while `subscribe(nc)` runs, in order."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ops = []

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.sendall(INFO)
            buf = b""
            while data := conn.recv(65536):
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    op = line.split(b" ", 1)[0].decode().upper()
                    ops.append(op)
                    if op == "PING":
                        conn.sendall(b"PONG\r\n")

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def client():
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
        await subscribe(nc)
        await nc.close()

    try:
        asyncio.run(asyncio.wait_for(client(), 10))
        server.join(10)
    finally:
        listener.close()
    return ops


async def ignore(msg):
    pass


def test_nats_py_flush_can_overtake_a_subscription_still_in_its_buffer():
    # Why subscribe_confirmed exists. Should a nats-py upgrade order them, its wait can go.
    async def plain(nc):
        await nc.subscribe("s", cb=ignore)
        await nc.flush()

    assert ops_on_the_wire(plain)[:4] == ["CONNECT", "PING", "PING", "SUB"]


def test_a_confirmed_subscription_reaches_the_server_before_the_ping_that_confirms_it():
    async def confirmed(nc):
        await subscribe_confirmed(nc, "s", ignore)

    assert ops_on_the_wire(confirmed)[:4] == ["CONNECT", "PING", "SUB", "PING"]
