#!/usr/bin/env bash
# Set up on a fresh machine, build Airlock and the example skills, and run one:
# its output, then a skill whose capability calls the broker denies.
set -euo pipefail
cd "$(dirname "$0")"

rustup target add wasm32-wasip2 >/dev/null
echo "== building the example skills (wasm32-wasip2 components)"
cargo build --quiet --release --manifest-path skills-examples/Cargo.toml
echo "== building airlock"
cargo build --quiet --release -p airlock-runtime
airlock=target/release/airlock
skills=skills-examples/target/wasm32-wasip2/release

echo
echo "\$ airlock run hello.wasm --input '{\"name\": \"Ada\"}'"
"$airlock" run "$skills/hello.wasm" --input '{"name": "Ada"}'

echo
echo "\$ airlock run capability_probe.wasm   # tries the network and storage; no policy is loaded"
"$airlock" run "$skills/capability_probe.wasm" --input '{"calls": [
  {"op": "http.fetch", "url": "https://api.example.com/v1/reports"},
  {"op": "storage.get", "key": "reports/q3"}]}'
