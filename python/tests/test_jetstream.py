"""JetStream mode end to end: a real playbook through ansible-runner with
RUNNER_NATS_JETSTREAM=true, and the stream read back with nats-py's JetStream API."""

import asyncio
import json

import nats
import pytest

from e2e_support import NatsServer, base_env, job_events, private_data_dir, run_cli

STREAM = "RUNS"


@pytest.fixture
def js_server(tmp_path):
    store = tmp_path / "jetstream"
    s = NatsServer(tmp_path, extra=f'jetstream {{ store_dir: "{store}" }}')
    yield s
    s.stop()


def read_stream(url, name):
    """Every message of the stream: (subject, headers, data), in order."""

    async def main():
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info(name)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                m = await js.get_msg(name, seq)
                out.append((m.subject, m.headers or {}, m.data))
            return out
        finally:
            await nc.close()

    return asyncio.run(main())


def test_a_playbook_run_is_stored_once_per_event_and_status(tmp_path, js_server):
    pdd = private_data_dir(tmp_path)
    env = base_env(
        RUNNER_NATS_SUBJECT_ID="e2e",
        RUNNER_NATS_SERVERS=js_server.url,
        RUNNER_NATS_JETSTREAM="true",
        RUNNER_NATS_JETSTREAM_STREAM=STREAM,
        RUNNER_NATS_HEADERS="producer=ansible-runner",
    )
    proc, _ = run_cli(pdd, env, "js-run")
    assert proc.returncode == 0, proc.stderr
    assert "ansible-runner.nats" not in proc.stderr, proc.stderr

    stored = read_stream(js_server.url, STREAM)
    expected = job_events(pdd, "js-run")
    assert expected, "the run wrote no job_events"
    events = [s for s in stored if s[0] == "pub.ansible.runner.e2e.js-run.event"]
    statuses = [s for s in stored if s[0] == "pub.ansible.runner.e2e.js-run.status"]
    assert len(events) + len(statuses) == len(stored), [s[0] for s in stored]

    # Exactly one stored message per job_events file, identified by its uuid.
    by_id = {}
    for _, headers, data in events:
        by_id.setdefault(headers["Nats-Msg-Id"], []).append(json.loads(data))
    assert sorted(by_id) == sorted(e["uuid"] for e in expected)
    for event in expected:
        copies = by_id[event["uuid"]]
        assert len(copies) == 1, f"event {event['counter']} stored {len(copies)} times"
        assert copies[0] == event
        assert all(h["producer"] == "ansible-runner" for _, h, _ in events)

    # <runner_ident>-<run>-<status>, <run> the same 8 hex digits for the whole run.
    ids = [(h["Nats-Msg-Id"], json.loads(d)["status"]) for _, h, d in statuses]
    run = ids[0][0][len("js-run-"):-len("-starting")]
    assert len(run) == 8 and int(run, 16) >= 0, ids
    assert ids == [
        (f"js-run-{run}-starting", "starting"),
        (f"js-run-{run}-running", "running"),
        (f"js-run-{run}-successful", "successful"),
    ]
