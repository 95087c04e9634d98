#!/usr/bin/env bash
# What the insights cost on the action-cache write path, in one run: kiln
# with every insight on (`nondeterminism`, `misses`, `scorecards`) and
# with all of them off, the same
# `kiln bench` ac workload (UpdateActionResult of fresh actions, each of
# its own target and output path as in a build, so each is a new identity
# for the miss recorder; then GetActionResult of them), ROUNDS times
# alternating so the machine's drift
# falls on both; prints each round's calls/s and server CPU per call, the
# medians and the ratio on/off.
#
# Stores: in memory by default, so the comparison is not drowned in the
# disk's sync rounds (whose CPU per call varied 240-550 us between rounds
# minutes apart here); STORES=disk runs the embedded default instead.
#
# RATE=N issues N calls/s in all (`kiln bench --rate`) instead of a closed
# loop: both modes then carry the same load, so the CPU per call compares
# the work itself; in a closed loop the slower mode also pays more idle
# wake-ups per call. Pick a rate both sustain (see a closed-loop run).
#
# WORKLOAD=ac_write sends the updates alone (the write path's own cost).
#
# PAIRED=1 runs both servers at once, each loaded by its own client at
# RATE (required): rounds run one after the other here varied by more than
# the effect measured (insights off alone from 52 to 74 us per write at
# 8,000/s), while side by side the machine's drift falls on both. Each
# figure includes the other pair's load, so compare on/off, not the
# absolute numbers with a run alone.
#
#   benches/insights.sh          (env: ROUNDS 3, DURATION 10s, CONCURRENCY 8,
#                                 STORES memory|disk, RATE, WORKLOAD ac,
#                                 PAIRED)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
WORK="${KILN_BENCH_DIR:-/var/tmp/kiln-bench}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONCURRENCY="${CONCURRENCY:-8}"
STORES="${STORES:-memory}"
WORKLOAD="${WORKLOAD:-ac}"
RATE_ARGS=()
[ -n "${RATE:-}" ] && RATE_ARGS=(--rate "$RATE")
if [ -n "${PAIRED:-}" ] && [ -z "${RATE:-}" ]; then
    echo "PAIRED needs RATE: two closed loops would share the machine unevenly" >&2
    exit 2
fi
log() { echo "==> $*" >&2; }

log "building kiln (release)"
cargo build --release --quiet
KILN="$CARGO_TARGET_DIR/release/kiln"
mkdir -p "$WORK"
RUN=$(mktemp -d "$WORK/insights.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

for mode in on off; do
    flag=true
    [ "$mode" = off ] && flag=false
    {
        echo "insights: { nondeterminism: $flag, misses: $flag, scorecards: $flag }"
        if [ "$STORES" = disk ]; then
            cat config/default.yaml
        else
            printf 'instances:\n  - name: ""\n    cas: { memory: { max_size: 1GiB } }\n    action_cache: { memory: { max_size: 1GiB } }\n'
        fi
    } > "$RUN/$mode.yaml"
done
# One round of `mode` on port `port`: its bench's JSON line, tagged.
bench_one() {
    local mode=$1 port=$2 round=$3
    "$KILN" bench --json --target "grpc://127.0.0.1:$port" --workload "$WORKLOAD" --duration "$DURATION" \
        --concurrency "$CONCURRENCY" "${RATE_ARGS[@]}" --server-pid "$(cat "$RUN/kiln-$mode.pid")" \
        | sed "s/^{/{\"mode\":\"$mode\",\"round\":$round,/" > "$RUN/round-$mode.jsonl"
}
for round in $(seq 1 "$ROUNDS"); do
    if [ -n "${PAIRED:-}" ]; then
        # Side by side: both servers loaded at once, each by its own
        # client at RATE, so whatever the machine does meanwhile falls on
        # both within the round.
        for mode in on off; do
            port=50076
            [ "$mode" = off ] && port=50077
            rm -rf "$RUN/data-$mode"
            start "kiln-$mode" "$port" "$KILN" serve --config "$RUN/$mode.yaml" --listen "127.0.0.1:$port" \
                --http-listen "127.0.0.1:$((port + 10))" --data-dir "$RUN/data-$mode"
        done
        log "round $round, insights on and off side by side"
        bench_one on 50076 "$round" &
        on_bench=$!
        bench_one off 50077 "$round"
        wait "$on_bench"
        cat "$RUN/round-on.jsonl" "$RUN/round-off.jsonl" >> "$RUN/results.jsonl"
        stop kiln-on
        stop kiln-off
        continue
    fi
    for mode in on off; do
        rm -rf "$RUN/data-$mode"
        start "kiln-$mode" 50076 "$KILN" serve --config "$RUN/$mode.yaml" --listen 127.0.0.1:50076 \
            --http-listen 127.0.0.1:50086 --data-dir "$RUN/data-$mode"
        log "round $round, insights $mode"
        bench_one "$mode" 50076 "$round"
        cat "$RUN/round-$mode.jsonl" >> "$RUN/results.jsonl"
        stop "kiln-$mode"
    done
done
python3 - "$RUN/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    print(f"round {r['round']} insights {r['mode']:3} {r['workload']:10} {r['ops_per_sec']:9.0f} calls/s  "
          f"{r.get('server_cpu_us_per_op', 0):7.1f} us CPU/call")
for w in sorted({r["workload"] for r in rows}):
    med = {m: (statistics.median(r["ops_per_sec"] for r in rows if r["workload"] == w and r["mode"] == m),
               statistics.median(r.get("server_cpu_us_per_op", 0) for r in rows if r["workload"] == w and r["mode"] == m))
           for m in ("on", "off")}
    print(f"{w}: median on {med['on'][0]:.0f} calls/s {med['on'][1]:.1f} us, off {med['off'][0]:.0f} calls/s "
          f"{med['off'][1]:.1f} us; CPU per call on/off {med['on'][1] / med['off'][1]:.3f}, calls/s on/off "
          f"{med['on'][0] / med['off'][0]:.3f}")
    cpu = {(r["round"], r["mode"]): r.get("server_cpu_us_per_op", 0) for r in rows if r["workload"] == w}
    ratios = sorted(cpu[(n, "on")] / cpu[(n, "off")] for n, m in cpu if m == "on" and (n, "off") in cpu)
    if ratios:
        print(f"{w}: CPU per call on/off by round {' '.join(f'{x:.3f}' for x in ratios)}; "
              f"median {statistics.median(ratios):.3f}")
PY
