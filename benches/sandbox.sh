#!/usr/bin/env bash
# What the sandbox costs, and how fast a cancel stops an action, against the
# same worker without a sandbox in the same run (BENCHMARKS.md, Confinement).
#
#   benches/sandbox.sh            (as root: the worker gives actions pool uids)
#
# One kiln (fs CAS, SQLite scheduler) and one worker with --concurrency 1,
# started with --sandbox none and then with the default bubblewrap sandbox,
# ROUNDS times alternating. Each time, serially:
#   exec     no-op actions (/bin/true): the sandbox's fixed cost per action;
#   compile  `cc -O2 -c` of a generated ~400-function file with its object
#            file as the output: a compile-sized action;
#   cancel   a long action (a shell with a child in a session of its own),
#            cancelled once its process runs: CancelOperation to the last
#            process of the action gone, read from /proc. Sandboxed only:
#            without the sandbox the child in its own session is never
#            killed (a process-group kill misses it), which is one of the
#            things the sandbox is for.
# Prints JSON lines to $RUN/sandbox.jsonl and a markdown summary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${DURATION:-15s}"
ROUNDS="${ROUNDS:-2}"
CANCELS="${CANCELS:-100}"
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
KILN="${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln"
RUN="$(mktemp -d)"
chmod 755 "$RUN" # pool uids running actions need to reach their work dirs
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
log() { echo "==> $*" >&2; }

cat > "$RUN/kiln.yaml" <<YAML
listen: 127.0.0.1:50191
http_listen: 127.0.0.1:8191
data_dir: $RUN/data

instances:
  - name: ""
    cas: { fs: { path: cas } }
    action_cache: { fs: { path: ac } }
YAML
MALLOC_ARENA_MAX=2 "$KILN" serve --config "$RUN/kiln.yaml" > "$RUN/kiln.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do
    curl -fsS http://127.0.0.1:8191/healthz >/dev/null 2>&1 && break
    sleep 0.05
done
listed() { # bot-id: waits until the server lists that worker
    for _ in $(seq 400); do
        curl -fsS http://127.0.0.1:8191/operations | grep -q "$1" && return 0
        sleep 0.05
    done
    echo "worker $1 never connected" >&2; exit 1
}

for round in $(seq "$ROUNDS"); do
    for mode in none bwrap; do
        log "round $round: --sandbox $mode"
        bot="sbx-$mode-$round"
        "$KILN" worker --server grpc://127.0.0.1:50191 --concurrency 1 --work-dir "$RUN/w-$bot" \
            --bot-id "$bot" --sandbox "$mode" > "$RUN/$bot.log" 2>&1 &
        WORKER=$!
        PIDS+=($WORKER)
        listed "$bot"
        for w in exec compile; do
            "$KILN" bench --json --workload "$w" --target grpc://127.0.0.1:50191 \
                --concurrency 1 --duration "$DURATION" \
                | sed "s/\"workload\":\"$w\"/\"workload\":\"${w}_$mode\"/" >> "$RUN/sandbox.jsonl"
        done
        if [ "$mode" = bwrap ]; then
            "$KILN" bench --json --workload cancel --target grpc://127.0.0.1:50191 \
                --concurrency 1 --requests "$CANCELS" \
                | sed "s/\"workload\":\"cancel\"/\"workload\":\"cancel_$mode\"/" >> "$RUN/sandbox.jsonl"
        fi
        kill "$WORKER"
        wait "$WORKER" 2>/dev/null || true
    done
done

python3 - "$RUN/sandbox.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["workload"], []).append(r)
def med(name, key):
    return statistics.median(r[key] for r in by[name])
print("| workload | unsandboxed p50 ms | sandboxed p50 ms | difference | ratio | unsandboxed p99 ms | sandboxed p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|")
for w in ("exec", "compile"):
    a, b = f"{w}_none", f"{w}_bwrap"
    if a not in by or b not in by:
        continue
    pa, pb = med(a, "p50_ms"), med(b, "p50_ms")
    print(f"| {w} | {pa:.2f} | {pb:.2f} | {pb - pa:+.2f} | {pb / pa:.3f} | {med(a, 'p99_ms'):.2f} | {med(b, 'p99_ms'):.2f} |")
if "cancel_bwrap" in by:
    rs = by["cancel_bwrap"]
    print()
    print("| cancel to process tree gone (sandboxed) | p50 ms | p90 ms | p99 ms | max ms | samples |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rs:
        print(f"| run | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | {r['ops']} |")
errors = {k: sum(r.get("errors", 0) for r in v) for k, v in by.items()}
print()
print("errors:", errors, " runs:", {k: len(v) for k, v in by.items()})
PY
echo "raw: $RUN/sandbox.jsonl" >&2
