#!/usr/bin/env bash
# Set up on a fresh machine, build Airlock and the example skills, and run
# them: a skill's output, then a skill whose outbound call the broker denies
# because the run has read confidential data.
set -euo pipefail
cd "$(dirname "$0")"

rustup target add wasm32-wasip2 >/dev/null
echo "== building the example skills (wasm32-wasip2 components)"
cargo build --quiet --release --manifest-path skills-examples/Cargo.toml
echo "== building airlock"
cargo build --quiet --release -p airlock-runtime
airlock=target/release/airlock
skills=skills-examples/target/wasm32-wasip2/release
config=skills-examples/airlock.toml
# A fresh state directory, so the demo is the same every time.
AIRLOCK_HOME="$(mktemp -d)"
export AIRLOCK_HOME
trap 'rm -rf "$AIRLOCK_HOME"' EXIT

echo
echo "\$ airlock admit hello.wasm --name hello --agent planner --trust medium --by orchestrator"
"$airlock" admit "$skills/hello.wasm" --name hello --agent planner --trust medium --by orchestrator \
  | tee "$AIRLOCK_HOME/admitted"
digest="$(head -n 1 "$AIRLOCK_HOME/admitted")"

echo
echo "\$ airlock approve ${digest:0:12} --by reviewer --expires-in 1h"
"$airlock" approve "$digest" --by reviewer --expires-in 1h

echo
echo "\$ airlock run ${digest:0:12} --input '{\"name\": \"Ada\"}'"
"$airlock" run "$digest" --input '{"name": "Ada"}'

echo
echo "\$ airlock run --dev --config airlock.toml notes.wasm --input '{\"op\": \"put\", \"key\": \"reports/q3\", ...}'"
"$airlock" run --dev --config "$config" "$skills/notes.wasm" --agent planner --trust medium \
  --input '{"op": "put", "key": "reports/q3", "text": "Revenue grew. Revenue grew again, and costs fell."}'

echo
echo "\$ airlock run --dev --config airlock.toml report.wasm --input '{\"key\": \"reports/q3\", \"to\": \"https://reports.example.com/summaries\"}'"
"$airlock" run --dev --config "$config" "$skills/report.wasm" --agent planner --trust medium \
  --input '{"key": "reports/q3", "to": "https://reports.example.com/summaries"}'

echo
echo "\$ airlock audit verify"
"$airlock" audit verify
