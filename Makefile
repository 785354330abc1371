# The two commands a newcomer needs:
#   make demo   - a real playbook through ansible-runner with our plugin, publishing to a
#                 nats-server it starts itself, and what arrived
#   make test   - every test (Rust unit, conformance, fault injection, plugin end to end)
# Both install what they need first: the pinned tools into .venv, and the plugin.
# PYTHON=/path/to/python3.11-or-newer chooses the virtualenv's interpreter (default: python3).

VENV := .venv
PY := $(VENV)/bin/python
# Written by tools/setup.sh only when it (re)installed the tools; removed with the venv.
SETUP_STAMP := $(VENV)/.requirements.sha256
PLUGIN_STAMP := $(VENV)/.plugin-built
# What the native module is built from. Not the .py files: the install is editable.
PLUGIN_SOURCES := $(shell find src python/src -name '*.rs') \
	Cargo.toml python/Cargo.toml python/Cargo.lock python/build.rs python/pyproject.toml
# The Python plugin ours replaces, for the parity test and the benchmarks: installed beside
# the virtualenv's packages, not among them (its entry point is also named `nats`, and every
# ansible-runner of the tests would load it), and put on sys.path by what compares with it.
PEER_VERSION := 0.4.0
PEER_DIR := $(VENV)/peer
PEER_STAMP := $(PEER_DIR)/.ansible-runner-nats-$(PEER_VERSION)

.PHONY: setup plugin peer demo test test-rust test-python lint bench FORCE

# One target for the set-up, so that `make -j` runs it once. It is out of date when
# `tools/setup.sh --check` (run here, quick, changes nothing) fails: when the content of
# tools/requirements.txt, tools/constraints.txt or tools/setup.sh, or the interpreter's
# version, is not what the stamp was written for (a content hash: a touched file does not
# count), or when .venv is broken or stale (its Python gone or not the major.minor of
# $PYTHON, default python3; no pip). The recipe repairs .venv and rewrites the stamp.
# (PYTHON is passed on: make 4.3 does not give $(shell) the variables of its command line.)
SETUP_NEEDED := $(shell PYTHON='$(PYTHON)' tools/setup.sh --check >/dev/null 2>&1 || echo FORCE)
$(SETUP_STAMP): $(SETUP_NEEDED)
	@tools/setup.sh

setup: $(SETUP_STAMP)

# Build the plugin into the project virtualenv (rebuilt when its sources change, and after
# the tools were reinstalled or the virtualenv recreated).
$(PLUGIN_STAMP): $(PLUGIN_SOURCES) $(SETUP_STAMP)
	rm -f python/ansible_runner_nats_rs/*.so
	cd python && VIRTUAL_ENV="$(CURDIR)/$(VENV)" ../$(VENV)/bin/maturin develop --release --quiet
	touch $@

plugin: $(PLUGIN_STAMP)

$(PEER_STAMP): $(SETUP_STAMP)
	rm -rf $(PEER_DIR)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --target $(PEER_DIR) \
	  -c tools/constraints.txt ansible-runner-nats==$(PEER_VERSION)
	touch "$@"

peer: $(PEER_STAMP)

demo: plugin
	$(PY) tools/demo.py

test: lint test-rust test-python

test-rust: $(SETUP_STAMP)
	cargo test --workspace --all-targets
	cargo test --workspace --doc

test-python: plugin $(PEER_STAMP)
	$(PY) -m pytest -q python/tests

lint: $(SETUP_STAMP)
	cargo fmt --all --check
	cd python && cargo fmt --check
	cargo clippy --workspace --all-targets -- -D warnings
	cd python && PYO3_PYTHON="$(CURDIR)/$(PY)" cargo clippy --all-targets -- -D warnings
	cd python && PYO3_PYTHON="$(CURDIR)/$(PY)" cargo clippy --all-targets --features abi3 -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Benchmarks against the peers (not part of `make test`): see BENCHMARKS.md.
# Sections 1, 3, 4 (client throughput, latency, memory) are Rust; 2 and 5 (plugin cost per
# event, whole playbook run) Python, with the Python plugin from $(PEER_DIR). A Python
# benchmark's stderr goes to bench/target/<name>.stderr.log, shown when it fails.
bench: plugin $(PEER_STAMP)
	cd bench && BENCH_PYTHON="$(CURDIR)/$(PY)" cargo run --release --quiet
	@mkdir -p bench/target
	@for b in plugin_cost whole_run; do \
	  log=bench/target/$$b.stderr.log; \
	  $(PY) bench/py/$$b.py 2>"$$log" || { \
	    echo "bench/py/$$b.py failed; the end of $$log:" >&2; tail -n 40 "$$log" >&2; exit 1; }; \
	done

