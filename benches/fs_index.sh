#!/usr/bin/env bash
# The fs store's index at scale: lays out N blob files (default 1,000,000)
# the way the fs store does, then in one run measures how long `kiln serve`
# takes to open that store (the index rebuild) and FindMissingBlobs calls/s
# against it, with kiln on an empty in-memory CAS as the baseline.
#
#   benches/fs_index.sh            # N=1000000, one file per blob
#   N=100000 benches/fs_index.sh
#   LAYOUT=segments benches/fs_index.sh   # the blobs as records in segment
#                                         # files, as a CAS stores them now
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
N="${N:-1000000}"
LAYOUT="${LAYOUT:-files}"
DURATION="${DURATION:-8s}"
CONCURRENCY="${CONCURRENCY:-8}"
WORK=$(mktemp -d /var/tmp/kiln-fs-index.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

echo "==> building kiln (release)" >&2
cargo build --release --quiet
KILN="$CARGO_TARGET_DIR/release/kiln"

echo "==> laying out $N blobs ($LAYOUT)" >&2
python3 - "$WORK/data/cas" "$N" "$LAYOUT" <<'PY'
import hashlib, os, struct, sys, zlib
root, n, layout = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = os.path.join(root, "sha256")
for i in range(256):
    os.makedirs(os.path.join(base, "%02x" % i), exist_ok=True)
for f in ("blake3", "tmp", "segments"):
    os.makedirs(os.path.join(root, f), exist_ok=True)
if layout == "files":
    for i in range(n):
        data = b"%d" % i
        h = hashlib.sha256(data).hexdigest()
        with open(os.path.join(base, h[:2], "%s-%d" % (h, len(data))), "wb") as f:
            f.write(data)
else:
    # src/store/fs_segments.rs: a magic, then records of a 52-byte header
    # (magic, digest function, size, hash, CRC-32 of header and blob) and
    # the blob; a new segment past 64 MiB.
    seg, out, length = 0, None, 0
    for i in range(n):
        if out is None or length >= 64 << 20:
            if out:
                out.close()
            seg += 1
            out = open(os.path.join(root, "segments", "%016d.seg" % seg), "wb")
            out.write(b"KILNSEG1")
            length = 8
        data = b"%d" % i
        head = b"KSR1" + bytes(4) + struct.pack("<Q", len(data)) + hashlib.sha256(data).digest()
        record = head + struct.pack("<I", zlib.crc32(head + data)) + data
        out.write(record)
        length += len(record)
    out.close()
PY

serve() { # config-file; sets PID, PORT and START_MS (until the port answers)
    PORT=$((20000 + RANDOM % 20000))
    local start
    start=$(date +%s%N)
    "$KILN" serve --config "$1" --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" \
        --http-listen "127.0.0.1:$((PORT + 1))" > "$WORK/log" 2>&1 &
    PID=$!
    until "$KILN" bench --target "grpc://127.0.0.1:$PORT" --workload fmb --requests 1 --json >/dev/null 2>&1; do
        sleep 0.05
    done
    START_MS=$(( ($(date +%s%N) - start) / 1000000 ))
}

cat > "$WORK/disk.yaml" <<YAML
instances:
  - name: ""
    cas: { fs: { path: cas } }
    action_cache: { memory: { max_size: 64MiB } }
YAML
cat > "$WORK/memory.yaml" <<YAML
instances:
  - name: ""
    cas: { memory: { max_size: 1GiB } }
    action_cache: { memory: { max_size: 64MiB } }
YAML

serve "$WORK/disk.yaml"
port=$PORT start_ms=$START_MS
index_ms=$(grep -o 'index_ms=[0-9]*' "$WORK/log" | head -1 | cut -d= -f2)
rss=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
disk=$("$KILN" bench --target "grpc://127.0.0.1:$port" --workload fmb --duration "$DURATION" --concurrency "$CONCURRENCY" --json)
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
serve "$WORK/memory.yaml"
port=$PORT
# The same server holding nothing: the baseline the index's memory is
# measured against.
base_rss=$(grep VmRSS /proc/$PID/status | awk '{print $2}')
memory=$("$KILN" bench --target "grpc://127.0.0.1:$port" --workload fmb --duration "$DURATION" --concurrency "$CONCURRENCY" --json)
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""

python3 - "$N" "$index_ms" "$start_ms" "$rss" "$disk" "$memory" "$base_rss" "$LAYOUT" <<'PY'
import json, sys
n, index_ms, secs, rss = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) / 1000, int(sys.argv[4])
base_rss = int(sys.argv[7])
disk = [json.loads(l) for l in sys.argv[5].splitlines() if l.strip()][-1]
mem = [json.loads(l) for l in sys.argv[6].splitlines() if l.strip()][-1]
print(f"| store | blobs | index rebuild | start to serving | RSS after start | fmb calls/s (1,000 digests) | vs memory |")
print(f"|---|---:|---:|---:|---:|---:|---:|")
print(f"| fs (index, {sys.argv[8]}) | {n:,} | {index_ms} ms | {secs:.2f} s | {rss // 1024} MiB | {disk['ops_per_sec']:.0f} | {disk['ops_per_sec'] / mem['ops_per_sec']:.2f}x |")
print(f"| memory (baseline) | 0 | - | - | {base_rss // 1024} MiB | {mem['ops_per_sec']:.0f} | 1.00x |")
print()
print(f"index memory: {(rss - base_rss) * 1024 / n:.1f} bytes per blob (RSS after start, less the empty server's)")
PY
