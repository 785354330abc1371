# The two commands a newcomer needs:
#   make demo   - a real playbook through ansible-runner with our plugin, publishing to a
#                 nats-server it starts itself, and what arrived
#   make test   - every test (Rust unit, conformance, fault injection, plugin end to end)
# Both install what they need first: the pinned tools into .venv, and the plugin.

VENV := .venv
PY := $(VENV)/bin/python
PLUGIN_STAMP := $(VENV)/.plugin-built
PLUGIN_SOURCES := $(shell find src python/src python/ansible_runner_nats_rs -name '*.rs' -o -name '*.py') \
	Cargo.toml python/Cargo.toml python/build.rs python/pyproject.toml

.PHONY: setup plugin demo test test-rust test-python lint bench

setup:
	@tools/setup.sh

# Build the plugin into the project virtualenv (rebuilt when its sources change).
$(PLUGIN_STAMP): $(PLUGIN_SOURCES) tools/requirements.txt
	@tools/setup.sh
	rm -f python/ansible_runner_nats_rs/*.so
	cd python && VIRTUAL_ENV=$(CURDIR)/$(VENV) ../$(VENV)/bin/maturin develop --release --quiet
	touch $@

plugin: $(PLUGIN_STAMP)

demo: plugin
	$(PY) tools/demo.py

test: lint test-rust test-python

test-rust: setup
	cargo test --workspace --all-targets
	cargo test --workspace --doc

test-python: plugin
	$(PY) -m pytest -q python/tests

lint: setup
	cargo fmt --all --check
	cd python && cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd python && cargo clippy --all-targets -- -D warnings
	cd python && cargo clippy --all-targets --features abi3 -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Benchmarks against the peers (not part of `make test`): see BENCHMARKS.md.
# Sections 1, 3, 4 (client throughput, latency, memory) are Rust; 2 and 5 (plugin cost per
# event, whole playbook run) Python, with the Python plugin beside the virtualenv (bench/.deps).
bench: plugin
	cd bench && BENCH_PYTHON=$(CURDIR)/$(PY) cargo run --release --quiet
	$(PY) -m pip install --quiet --no-deps --target bench/.deps ansible-runner-nats==0.4.0
	$(PY) bench/py/plugin_cost.py 2>/dev/null
	$(PY) bench/py/whole_run.py 2>/dev/null
