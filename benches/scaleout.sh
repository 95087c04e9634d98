#!/usr/bin/env bash
# Web UI page times and cross-pod Execute latency, with same-run baselines.
#
#   KILN_TEST_POSTGRES_URL=postgres://... benches/scaleout.sh
#
# 1. Pages: one kiln (embedded default) gets a 1,000-target, 100,000-event
#    invocation (`kiln bench --workload pages`), then each page is fetched
#    serially; the baseline is GET /healthz in the same run.
# 2. Cross-pod: two kiln pods on one PostgreSQL, two workers on pod A. A
#    serial no-op Execute is sent to A (same pod: the baseline), then to B
#    (its completion, reported on A, must reach B), with LISTEN/NOTIFY and
#    then with polling alone (execution.notifications: false, 250 ms).
# 3. Resource accounting: one kiln (embedded default) and one worker; a
#    serial no-op Execute with the worker measuring each action through
#    kiln-measure, against the same worker started with --no-usage.
# Prints JSON lines to $RUN/*.jsonl and a markdown summary.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
: "${KILN_TEST_POSTGRES_URL:?set it to a PostgreSQL URL, e.g. the one the test command starts}"
DURATION="${DURATION:-10s}"
cargo build --release --manifest-path "$ROOT/Cargo.toml" >&2
KILN="${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln"
RUN="$(mktemp -d)"
chmod 755 "$RUN" # workers running actions as nobody need to reach their work dirs
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
log() { echo "==> $*" >&2; }
wait_http() {
    for _ in $(seq 200); do
        curl -fsS "http://$1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "kiln on $1 did not start" >&2; exit 1
}
serve() { # name grpc-port http-port extra-yaml
    cat > "$RUN/$1.yaml" <<YAML
listen: 127.0.0.1:$2
http_listen: 127.0.0.1:$3
data_dir: $RUN/shared-data
$4
instances:
  - name: ""
    cas: { fs: { path: cas } }
    action_cache: { fs: { path: ac } }
YAML
    MALLOC_ARENA_MAX=2 "$KILN" serve --config "$RUN/$1.yaml" > "$RUN/$1.log" 2>&1 &
    PIDS+=($!)
    echo $! > "$RUN/$1.pid"
    wait_http "127.0.0.1:$3"
}
stop() { kill "$(cat "$RUN/$1.pid")"; while kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; do sleep 0.05; done; }

log "pages"
serve pages 50181 8181 ""
"$KILN" bench --json --workload pages --target grpc://127.0.0.1:50181 \
    --http-target http://127.0.0.1:8181 --concurrency 1 --duration "$DURATION" > "$RUN/pages.jsonl"
stop pages

exec_on() { # label target [file]
    "$KILN" bench --json --workload exec --target "grpc://$2" --concurrency 1 --duration "$DURATION" \
        | sed "s/\"workload\":\"exec\"/\"workload\":\"$1\"/" >> "$RUN/${3:-pods}.jsonl"
}
listed() { # http-port bot-id-part count: waits until the pod lists that many workers
    for _ in $(seq 200); do
        [ "$(curl -fsS "http://127.0.0.1:$1/operations" | grep -c "$2")" -ge "$3" ] && return 0
        sleep 0.05
    done
}

log "resource accounting"
serve acct 50184 8184 ""
for mode in unmeasured measured; do
    "$KILN" worker --server grpc://127.0.0.1:50184 --concurrency 4 --work-dir "$RUN/acct-$mode" \
        --bot-id "acct-$mode" $([ $mode = unmeasured ] && echo --no-usage) > "$RUN/acct-$mode.log" 2>&1 &
    WORKER=$!
    PIDS+=($WORKER)
    listed 8184 "acct-$mode" 1
    exec_on "exec_$mode" 127.0.0.1:50184 acct
    kill $WORKER
    while kill -0 $WORKER 2>/dev/null; do sleep 0.05; done
done
stop acct
for mode in notify poll; do
    log "cross-pod ($mode)"
    extra="execution: { database: \"$KILN_TEST_POSTGRES_URL\", notifications: $([ $mode = notify ] && echo true || echo false) }"
    serve "a-$mode" 50182 8182 "$extra"
    serve "b-$mode" 50183 8183 "$extra"
    WORKERS=()
    for w in 1 2; do
        "$KILN" worker --server grpc://127.0.0.1:50182 --concurrency 4 --work-dir "$RUN/worker$w" \
            --bot-id "bench-$mode-$w" > "$RUN/worker$w.log" 2>&1 &
        WORKERS+=($!)
    done
    PIDS+=("${WORKERS[@]}")
    # The workers are polling once A lists them.
    listed 8182 "bench-$mode-" 2
    [ "$mode" = notify ] && exec_on exec_same_pod 127.0.0.1:50182
    exec_on "exec_cross_pod_$mode" 127.0.0.1:50183
    kill "${WORKERS[@]}"
    stop "a-$mode"
    stop "b-$mode"
done

python3 - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
rows = [json.loads(l) for f in ("pages.jsonl", "acct.jsonl", "pods.jsonl") for l in open(f"{run}/{f}") if l.startswith("{")]
by = {r["workload"]: r for r in rows}
print("| workload | calls | p50 ms | p99 ms | p50 vs baseline |")
print("|---|---|---|---|---|")
for name, r in by.items():
    if name.startswith(("page_", "http_")):
        base = by["http_healthz"]
    elif name in ("exec_measured", "exec_unmeasured"):
        base = by["exec_unmeasured"]
    else:
        base = by["exec_same_pod"]
    print(f"| {name} | {r['ops']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p50_ms'] / base['p50_ms']:.1f}x |")
PY
log "raw results in $RUN"
