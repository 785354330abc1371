"""Run a small real playbook with ansible-runner (used by the tests and to make the fixtures).

    python tests/playbook.py        # rewrites tests/fixtures/event_*.json
"""

import glob
import json
import os
import shlex
import sys
import tempfile

PLAYBOOK = """
- hosts: all
  gather_facts: false
  tasks:
    - name: say hello
      ansible.builtin.debug:
        msg: "h\u00e9llo w\u00f6rld \u2713 \\"quoted\\" back\\\\slash"
    - name: loop over sixty items
      ansible.builtin.command: "echo item {{ item }}"
      loop: "{{ range(60) | list }}"
      changed_when: false
    - name: set a fact with numbers
      ansible.builtin.set_fact:
        nums: {a: 1, b: 2.5, c: [1, 2, 3], big: 123456789012345678901234567890, neg: -0.0, emoji: "\U0001F600", ctl: "tab\\tnl\\n"}
"""


# The same kinds of values, in a run of a few seconds (for tests that need several runs).
SHORT_PLAYBOOK = PLAYBOOK.replace("range(60)", "range(3)")


def run_playbook(private_data_dir, playbook=PLAYBOOK, **kwargs):
    """Run `playbook`; return (runner, list of (path, event dict) of every job event)."""
    import ansible_runner

    os.makedirs(os.path.join(private_data_dir, "project"), exist_ok=True)
    with open(os.path.join(private_data_dir, "project", "site.yml"), "w", encoding="utf-8") as f:
        f.write(playbook)
    # ansible-playbook lives beside this interpreter (the venv's bin/).
    bindir = os.path.dirname(sys.executable)
    envvars = {"PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    r = ansible_runner.run(
        private_data_dir=private_data_dir,
        playbook="site.yml",
        inventory="localhost ansible_connection=local ansible_python_interpreter=" + shlex.quote(sys.executable),
        envvars=envvars,
        quiet=True,
        **kwargs,
    )
    events = []
    for path in glob.glob(os.path.join(private_data_dir, "artifacts", "*", "job_events", "*.json")):
        with open(path, encoding="utf-8") as f:
            events.append((path, json.load(f)))
    return r, events


def main():
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
    with tempfile.TemporaryDirectory() as tmp:
        r, events = run_playbook(tmp)
        assert r.status == "successful", (r.status, r.rc)
        by_kind = {}
        for path, ev in events:
            by_kind.setdefault(ev["event"], []).append((os.path.getsize(path), ev))
        _, loop = max(by_kind["runner_on_ok"], key=lambda x: x[0])
        _, item = by_kind["runner_item_on_ok"][0]
        assert len(loop["event_data"]["res"]["results"]) == 60
        for name, ev in (("event_loop60.json", loop), ("event_item.json", item)):
            with open(os.path.join(here, name), "w", encoding="utf-8") as f:
                json.dump(ev, f)
            print(name, len(json.dumps(ev)), "bytes")


if __name__ == "__main__":
    main()
