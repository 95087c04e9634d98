# Shared by the bench scripts that run servers side by side (compare.sh,
# s3.sh); sourced, with RUN (a scratch directory) and PIDS (an array) set.

# name port command...: starts a server, logging to $RUN/name.log and its
# pid to $RUN/name.pid, and waits until its port accepts connections.
start() {
    local name=$1 port=$2
    shift 2
    "$@" > "$RUN/$name.log" 2>&1 &
    PIDS+=($!)
    echo $! > "$RUN/$name.pid"
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null || break
        sleep 0.2
    done
    echo "$name did not start listening on $port; its log:" >&2
    cat "$RUN/$name.log" >&2
    exit 1
}

# Stops a server and waits until it has exited (and let go of its ports).
stop() { local pid; pid=$(cat "$RUN/$1.pid"); kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }

# weed: SeaweedFS on 127.0.0.1:18433 with bucket "kiln", as "seaweedfs";
# exports the credentials it accepts. The bucket exists a moment after the
# port opens.
start_seaweedfs() {
    local weed=$1
    echo '{"identities":[{"name":"bench","credentials":[{"accessKey":"benchkey","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' > "$RUN/s3.json"
    mkdir -p "$RUN/weed"
    start seaweedfs 18433 "$weed" mini -dir="$RUN/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -s3.port=18433 -s3.port.grpc=28433 -master.port=18434 -master.port.grpc=28434 \
        -volume.port=18435 -volume.port.grpc=28435 -filer.port=18436 -filer.port.grpc=28436 \
        -admin.port=18437 -admin.port.grpc=28437 -webdav=false -admin.ui=false \
        -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$RUN/s3.json" -bucket=kiln
    export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
    sleep 3
}

# port storage: a BuildGrid 0.9 config on 127.0.0.1:PORT whose CAS, ByteStream
# and action cache use STORAGE (YAML lines for its `storages:` list, the
# storage anchored as &main-storage).
bgd_config() {
    local port=$1 storage=$2
    cat <<YAML
server:
  - !channel
    address: "127.0.0.1:$port"
    insecure-mode: true
authorization: { method: none }
monitoring: { enabled: false }
storages:
$storage
caches:
  - !lru-action-cache &main-action
    storage: *main-storage
    max-cached-refs: 1000000
    allow-updates: true
    cache-failed-actions: true
instances:
  - name: ""
    services:
      - !action-cache { cache: *main-action }
      - !cas { storage: *main-storage }
      - !bytestream { storage: *main-storage }
thread-pool-size: 20
YAML
}

# The S3 storage lines of bgd_config for the SeaweedFS of start_seaweedfs.
BGD_S3_STORAGE='  - !s3-storage &main-storage
    bucket: kiln
    endpoint: http://127.0.0.1:18433
    access-key: benchkey
    secret-key: benchsecret'
