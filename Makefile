# The two commands a newcomer needs:
#   make demo   - start a nats-server, publish with the library, show what arrived
#   make test   - run every test
# Both install what they need (pinned tools into .venv) first.

.PHONY: setup demo test lint

setup:
	@tools/setup.sh

demo: setup
	cargo run --quiet --release --example demo

test: setup lint
	cargo test --workspace --all-targets
	cargo test --workspace --doc

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
