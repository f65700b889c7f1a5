# Shared by the loadtest scripts (sourced, not run): a scratch directory and a list of
# background processes, both cleaned up on exit, port helpers, and a scratch redis-server.

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A free loopback TCP port.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a scratch redis-server (no persistence) on a free loopback port, pinned to the CPUs
# in $1 ("" for none), with any further arguments; sets RS (its port) and RS_PID.
start_redis() {
    local cpus=$1 pin=()
    shift
    [ -z "$cpus" ] || pin=(taskset -c "$cpus")
    RS=$(free_port)
    "${pin[@]}" redis-server --port "$RS" --bind 127.0.0.1 --save "" --appendonly no "$@" \
        >"$WORK/redis-$RS.log" 2>&1 &
    RS_PID=$!
    PIDS+=("$RS_PID")
    wait_port "$RS"
}

# Waits (up to 10s) until something listens on loopback port $1.
wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listening on $1; the logs' last lines:" >&2
    tail -n 5 "$WORK"/*.log >&2 || true
    exit 1
}

# start_nginx NAME CPU PORT HTTP_BLOCK: an nginx, one worker on CPU ("" for none), with HTTP_BLOCK (which
# listens on PORT) in its http block, NGX_CONNS (4096) connections per worker, keep-alive unbounded like tiergate's and its scratch
# files under $WORK/NAME; sets NGX_MASTER and NGX_WORKER.
start_nginx() {
    local dir=$WORK/$1 cpu=$2 port=$3 body=$4
    mkdir -p "$dir"
    # The worker runs as this user: the scratch directory (a proxy_cache_path) is private.
    cat >"$dir/nginx.conf" <<CONF
user $(id -un);
worker_processes 1;
daemon off;
error_log $dir/error.log warn;
pid $dir/nginx.pid;
events { worker_connections ${NGX_CONNS:-4096}; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $dir; proxy_temp_path $dir; fastcgi_temp_path $dir;
    uwsgi_temp_path $dir; scgi_temp_path $dir;
$body
}
CONF
    local pin=()
    [ -z "$cpu" ] || pin=(taskset -c "$cpu")
    "${pin[@]}" nginx -c "$dir/nginx.conf" -p "$dir" 2>"$dir/stderr" &
    NGX_MASTER=$!; PIDS+=("$NGX_MASTER")
    wait_port "$port"
    NGX_WORKER=$(pgrep -P "$NGX_MASTER" | head -1)
}
