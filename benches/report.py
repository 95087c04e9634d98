#!/usr/bin/env python3
"""Turns the JSON lines of one bench/compare.sh run into a markdown report.

Every ratio compares numbers measured in the same run on the same machine.
With --write FILE, the report replaces the text between the results markers
in FILE (BENCHMARKS.md).
"""

import argparse
import datetime
import json
import os
import platform
import re

START, END = "<!-- results:start -->", "<!-- results:end -->"


def memory_tiers_mib(config):
    """The memory budget of a config: the sum of its memory tiers' sizes
    (read from the file, so the goal follows config/default.yaml)."""
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
    text = open(config).read()
    sizes = re.findall(r"memory_cache:\s*\n\s*max_size:\s*(\d+)(KiB|MiB|GiB)", text)
    return round(sum(int(n) * units[u] for n, u in sizes))


# The memory budget of kiln's embedded default: its memory tiers.
DISK_BUDGET_MIB = memory_tiers_mib(os.path.join(os.path.dirname(__file__), "..", "config", "default.yaml"))


def load(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                out[rec["workload"]] = rec
    return out


def get(runs, workload, field):
    rec = runs.get(workload)
    return None if rec is None else rec.get(field)


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    if abs(v) >= 10:
        return f"{v:.1f}{unit}"
    return f"{v:.2f}{unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser()
    for name in ("hash", "disk", "memory", "buildgrid", "kiln-s3", "buildgrid-s3"):
        p.add_argument(f"--{name}", required=True)
    for name in ("concurrency", "duration", "blob-size", "big-blob", "tree-dirs", "s3-blob"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--write")
    a = p.parse_args()
    h, disk, mem, bg = load(a.hash), load(a.disk), load(a.memory), load(a.buildgrid)
    servers = [("kiln (disk default)", disk), ("kiln (memory)", mem), ("BuildGrid 0.9 (memory)", bg)]

    mb = lambda runs, w: None if get(runs, w, "bytes_per_sec") is None else get(runs, w, "bytes_per_sec") / 1e6
    rows = [
        ("fmb: FindMissingBlobs calls/s (1,000 digests)", lambda r: get(r, "fmb", "ops_per_sec"), True),
        ("fmb: p99 latency (ms)", lambda r: get(r, "fmb", "p99_ms"), False),
        ("batch: calls/s (100 x 4 KiB, update+read)", lambda r: get(r, "batch", "ops_per_sec"), True),
        ("batch: p99 latency (ms)", lambda r: get(r, "batch", "p99_ms"), False),
        (f"bytestream write MB/s ({a.blob_size} blobs)", lambda r: mb(r, "bytestream_write"), True),
        (f"bytestream read MB/s ({a.blob_size} blobs)", lambda r: mb(r, "bytestream_read"), True),
        (f"tree: cold GetTree p50 (ms, {a.tree_dirs} dirs)", lambda r: get(r, "tree_cold", "p50_ms"), False),
        (f"tree: warm GetTree p50 (ms, {a.tree_dirs} dirs)", lambda r: get(r, "tree_warm", "p50_ms"), False),
        ("ac: calls/s (update+get)", lambda r: get(r, "ac", "ops_per_sec"), True),
        ("ac: p99 latency (ms)", lambda r: get(r, "ac", "p99_ms"), False),
        ("peak RSS (MiB)", lambda r: get(r, "peak_rss", "mib"), False),
    ]
    errors = {name: sum(rec.get("errors", 0) for rec in runs.values()) for name, runs in servers}

    sha = mb(h, "hash_sha256")
    b3 = mb(h, "hash_blake3")
    lines = []
    lines.append(f"Run: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                 f"{os.cpu_count()} cores ({cpu_model()}), concurrency {a.concurrency}, "
                 f"{a.duration} per timed phase.")
    lines.append("")
    lines.append(f"One core hashes SHA-256 at {fmt(sha)} MB/s and BLAKE3 at {fmt(b3)} MB/s in this run.")
    lines.append("")
    lines.append("| measure | " + " | ".join(n for n, _ in servers) + " | kiln disk / BuildGrid | kiln memory / BuildGrid |")
    lines.append("|---|" + "---:|" * (len(servers) + 2))
    for label, f, higher_better in rows:
        vals = [f(runs) for _, runs in servers]
        if higher_better:
            r1, r2 = ratio(vals[0], vals[2]), ratio(vals[1], vals[2])
        else:  # lower is better: show how many times smaller kiln's number is
            r1, r2 = ratio(vals[2], vals[0]), ratio(vals[2], vals[1])
        rs = [("n/a" if r is None else f"{r:.1f}x") for r in (r1, r2)]
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in vals) + f" | {rs[0]} | {rs[1]} |")
    lines.append("")
    lines.append("Ratios are \"times better\": for latencies and memory, BuildGrid's number divided by kiln's.")
    lines.append("")

    # Server CPU per call against the hashing floor (what verifying the
    # uploaded bytes costs one core at this run's SHA-256 speed).
    def cpu(runs, w):
        return get(runs, w, "server_cpu_us_per_op")

    def per_mb(runs, w):
        c, ops, bps = cpu(runs, w), get(runs, w, "ops_per_sec"), get(runs, w, "bytes_per_sec")
        if c is None or not ops or not bps:
            return None
        return c / (bps / ops / 1e6)

    # A batch call is an update (hashing 100 x 4 KiB) or a read (no hashing), alternately.
    batch_floor = None if sha is None else 0.5 * 100 * 4096 / sha
    write_floor = None if sha is None else 1e6 / sha
    cpu_rows = [
        ("fmb (1,000 digests)", lambda r: cpu(r, "fmb"), 0.0),
        ("batch (100 x 4 KiB, update+read)", lambda r: cpu(r, "batch"), batch_floor),
        ("ac (update+get)", lambda r: cpu(r, "ac"), 0.0),
        ("bytestream write, per MB", lambda r: per_mb(r, "bytestream_write"), write_floor),
        ("bytestream read, per MB", lambda r: per_mb(r, "bytestream_read"), 0.0),
    ]
    lines.append("Server CPU per call (user + system, µs, from /proc/PID/stat) and the hashing floor: "
                 "the SHA-256 time one core needs for the bytes a call uploads.")
    lines.append("")
    lines.append("| server CPU per call (µs) | " + " | ".join(n for n, _ in servers) + " | hashing floor | kiln memory / floor |")
    lines.append("|---|" + "---:|" * (len(servers) + 2))
    for label, f, floor in cpu_rows:
        vals = [f(runs) for _, runs in servers]
        over = ratio(vals[1], floor) if floor else None
        lines.append(f"| {label} | " + " | ".join(fmt(v) for v in vals) + f" | {fmt(floor)} | "
                     + ("-" if over is None else f"{over:.1f}x") + " |")
    lines.append("Errors during the run: " + ", ".join(f"{n}: {e}" for n, e in errors.items()) + ".")
    lines.append("")

    # Goals.
    def status(ok):
        return "n/a" if ok is None else ("met" if ok else "not met")

    fmb_r = ratio(get(mem, "fmb", "ops_per_sec"), get(bg, "fmb", "ops_per_sec"))
    batch_r = ratio(get(mem, "batch", "ops_per_sec"), get(bg, "batch", "ops_per_sec"))
    w_frac = ratio(mb(disk, "bytestream_write"), sha)
    w_frac_mem = ratio(mb(mem, "bytestream_write"), sha)
    read_gb = mb(mem, "bytestream_read")
    tree_x = ratio(get(mem, "tree_cold", "p50_ms"), get(mem, "tree_warm", "p50_ms"))
    rss = get(disk, "peak_rss", "mib")
    big_w = mb(disk, "big_bytestream_write")
    lines.append("| goal | measured | status |")
    lines.append("|---|---|---|")
    fmb_disk_r = ratio(get(disk, "fmb", "ops_per_sec"), get(bg, "fmb", "ops_per_sec"))
    batch_disk_r = ratio(get(disk, "batch", "ops_per_sec"), get(bg, "batch", "ops_per_sec"))
    batch_cpu = cpu(mem, "batch")
    batch_over = ratio(batch_cpu, batch_floor)
    lines.append(f"| fmb: kiln disk default and memory >= 10x BuildGrid calls/s | {fmt(fmb_disk_r, 'x')} disk, {fmt(fmb_r, 'x')} memory | "
                 f"{status(None if fmb_r is None or fmb_disk_r is None else min(fmb_r, fmb_disk_r) >= 10)} |")
    lines.append(f"| batch: kiln memory >= 5x BuildGrid calls/s | {fmt(batch_r, 'x')} | {status(None if batch_r is None else batch_r >= 5)} |")
    lines.append(f"| batch: kiln memory CPU per call <= 3x the hashing floor | {fmt(batch_cpu)} µs, {fmt(batch_over, 'x')} the floor ({fmt(batch_floor)} µs) | "
                 f"{status(None if batch_over is None else batch_over <= 3)} |")
    lines.append(f"| batch: kiln disk default (durable) >= 2x BuildGrid memory | {fmt(batch_disk_r, 'x')} | {status(None if batch_disk_r is None else batch_disk_r >= 2)} |")
    lines.append(f"| bytestream write: memory >= 60% of one-core SHA-256 | {fmt(None if w_frac_mem is None else 100 * w_frac_mem, '%')} | "
                 f"{status(None if w_frac_mem is None else w_frac_mem >= 0.6)} |")
    lines.append(f"| bytestream write: disk default >= 50% of one-core SHA-256 | {fmt(None if w_frac is None else 100 * w_frac, '%')} | "
                 f"{status(None if w_frac is None else w_frac >= 0.5)} |")
    lines.append(f"| bytestream read >= 1 GB/s | {fmt(read_gb)} MB/s (memory), {fmt(mb(disk, 'bytestream_read'))} MB/s (disk) | {status(None if read_gb is None else read_gb >= 1000)} |")
    lines.append(f"| tree (an earlier round's goal): warm GetTree >= 50x faster than cold | {fmt(tree_x, 'x')} (memory) | {status(None if tree_x is None else tree_x >= 50)} |")
    lines.append(f"| RSS (an earlier round's goal) <= cache budget ({DISK_BUDGET_MIB} MiB) + 100 MiB while streaming {a.big_blob} blobs | "
                 f"peak {fmt(rss)} MiB (disk default; {a.big_blob} writes at {fmt(big_w)} MB/s) | "
                 f"{status(None if rss is None else rss <= DISK_BUDGET_MIB + 100)} |")
    soak = get(disk, "soak_rss", "mib")
    lines.append(f"| soak: 16 mixed clients on the embedded default, peak RSS <= memory tiers ({DISK_BUDGET_MIB} MiB) + 100 MiB | "
                 f"peak {fmt(soak)} MiB ({get(disk, 'soak_rss', 'errors')} errors) | "
                 f"{status(None if soak is None else soak <= DISK_BUDGET_MIB + 100)} |")
    bes_rate = get(disk, "bes", "ops_per_sec")
    bes_p99 = get(disk, "bes", "p99_ms")
    lines.append(f"| bes: >= 50,000 events/s stored durably on SQLite | {fmt(bes_rate)} events/s | {status(None if bes_rate is None else bes_rate >= 50000)} |")
    lines.append(f"| bes (an earlier round's goal): acknowledgement p99 < 5 ms | {fmt(bes_p99)} ms (p50 {fmt(get(disk, 'bes', 'p50_ms'))} ms) | {status(None if bes_p99 is None else bes_p99 < 5)} |")
    ex_p50 = get(disk, "exec_serial", "p50_ms")
    ex_rate = get(disk, "exec", "ops_per_sec")
    spawn = get(disk, "local_spawn", "p50_ms")
    lines.append(f"| exec: the sandboxed no-op action (Execute to result) p50 < 6 ms on SQLite | "
                 f"{fmt(ex_p50)} ms, {fmt(ratio(ex_p50, spawn), 'x')} a bare local spawn of /bin/true ({fmt(spawn)} ms) | "
                 f"{status(None if ex_p50 is None else ex_p50 < 6)} |")
    lines.append(f"| exec: >= 300 no-op actions/s with two workers | {fmt(ex_rate)} actions/s "
                 f"(p50 {fmt(get(disk, 'exec', 'p50_ms'))} ms, 8 in flight, 2 workers x 4 slots) | "
                 f"{status(None if ex_rate is None else ex_rate >= 300)} |")
    ph = get(disk, "exec_serial", "phases_ms")
    if ph:
        lines.append("")
        lines.append(f"exec serial, where the time goes (means from ExecutedActionMetadata): worker total "
                     f"{fmt(ph.get('worker_total'))} ms = input fetch {fmt(ph.get('input_fetch'))}, execution "
                     f"{fmt(ph.get('execution'))}, output upload {fmt(ph.get('output_upload'))}; the rest of the "
                     f"call is queueing, lease hand-off, the report, the action-cache write and the answer.")
    lines.append("")
    lines.append("exec: every call executes a distinct cacheable no-op action with skip_cache_lookup, so "
                 "each is queued, leased, run by a `kiln worker`, reported, written to the action cache "
                 "and completed; the load generator, kiln and both workers share the 2 cores. "
                 "BuildGrid's execution service needs a bot no reachable registry ships, so the baseline "
                 "is a bare local spawn measured in the same run.")
    lines.append("")
    lines.append("bes: 100,000 synthetic Bazel events over `concurrency` streams, each keeping at most 256 "
                 "unacknowledged; kiln acknowledges an event only after its SQLite transaction (WAL, "
                 "synchronous=FULL) committed. BuildGrid 0.9's build-event service does not work "
                 "(every call fails with \"Instance name not set\"), so there is no ratio.")
    lines.append("")
    lines.append("### On S3 (one local SeaweedFS)")
    lines.append("")
    lines.append("kiln runs config/s3.yaml (memory tier, existence cache, CAS and action cache on S3); "
                 "BuildGrid runs its !s3-storage CAS with its in-memory action cache.")
    lines.append("")
    ks3, bs3 = load(a.kiln_s3), load(a.buildgrid_s3)
    lines.append("| measure | kiln (S3) | BuildGrid 0.9 (S3) | kiln / BuildGrid | kiln S3 requests per call | per digest |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    s3rows = [
        ("fmb: calls/s (1,000 digests, half fresh and absent)", "fmb", "ops_per_sec", True),
        ("fmb_present: calls/s (the same 1,000 present digests; warm)", "fmb_present", "ops_per_sec", True),
        ("batch: calls/s (100 x 4 KiB, update+read)", "batch", "ops_per_sec", True),
        (f"bytestream write MB/s ({a.s3_blob} blobs)", "bytestream_write", "mbps", True),
        (f"bytestream read MB/s ({a.s3_blob} blobs)", "bytestream_read", "mbps", True),
    ]
    for label, w, field, _ in s3rows:
        kv = mb(ks3, w) if field == "mbps" else get(ks3, w, field)
        bv = mb(bs3, w) if field == "mbps" else get(bs3, w, field)
        r = ratio(kv, bv)
        lines.append(f"| {label} | {fmt(kv)} | {fmt(bv)} | {'n/a' if r is None else f'{r:.1f}x'} | "
                     f"{fmt(get(ks3, w, 'backend_calls_per_op'))} | {fmt(get(ks3, w, 'backend_calls_per_item'))} |")
    lines.append(f"| peak RSS (MiB) | {fmt(get(ks3, 'peak_rss', 'mib'))} | {fmt(get(bs3, 'peak_rss', 'mib'))} | | | |")
    lines.append("")
    warm = get(ks3, "fmb_present", "backend_calls_per_item")
    batch_s3 = ratio(get(ks3, "batch", "ops_per_sec"), get(bs3, "batch", "ops_per_sec"))
    lines.append("| goal | measured | status |")
    lines.append("|---|---|---|")
    lines.append(f"| warm FindMissingBlobs <= 0.05 backend calls per digest | {fmt(warm)} | {status(None if warm is None else warm <= 0.05)} |")
    lines.append(f"| batch over the same S3 >= 10x BuildGrid | {fmt(batch_s3, 'x')} | {status(None if batch_s3 is None else batch_s3 >= 10)} |")
    lines.append("")
    lines.append("S3 requests count one HEAD per digest asked, one GET per read and one upload per put "
                 "(a multipart upload counts once).")
    report = "\n".join(lines)
    print(report)

    if a.write:
        with open(a.write) as f:
            text = f.read()
        new = re.sub(re.escape(START) + ".*?" + re.escape(END), START + "\n" + report + "\n" + END, text, flags=re.S)
        with open(a.write, "w") as f:
            f.write(new)


if __name__ == "__main__":
    main()
