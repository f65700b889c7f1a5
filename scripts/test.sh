#!/usr/bin/env bash
# Runs every check CI runs: installs what the tests need when it is missing (redis-server and
# redis-cli from Debian; prometheus and promtool from Debian, for tests/prometheus.rs; chromium
# from Debian, whose headless mode drives the admin status page in tests/status_page.rs;
# python3 and pip from Debian, then redis-py from PyPI, for tests/clients/redis_py.py), then
# cargo fmt --check, clippy with warnings denied, the tests with warnings denied, and the KV
# and RESP suites once more over a local Redis Cluster.
# Run from anywhere: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# tests/prometheus.rs runs a real prometheus over deploy/, and promtool on its rules; the
# Debian package ships both.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    need_apt+=(prometheus)
fi
# CI's machines have python3 and pip already; a bare Debian gets them from its packages.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
# tests/status_page.rs renders the admin status page in it (skipped without it, unless CI=true).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
if ((${#need_apt[@]})); then
    echo "==> installing ${need_apt[*]}"
    # Root in CI and on the dev machines; use sudo elsewhere if there is one.
    SUDO=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # The Debian package starts a system redis on 6379; the tests start their own on free ports.
    $SUDO service redis-server stop >/dev/null 2>&1 || true
    # Likewise prometheus on 9090 (tiergate's default admin port) and the node exporter it
    # recommends on 9100; tests/prometheus.rs starts its own prometheus on a free port.
    $SUDO service prometheus stop >/dev/null 2>&1 || true
    $SUDO service prometheus-node-exporter stop >/dev/null 2>&1 || true
fi
echo "==> $(redis-server --version)"
echo "==> $(/usr/bin/chromium --version 2>/dev/null)"
echo "==> $(prometheus --version 2>&1 | head -n 1)"

# redis-py, one major version: tests/clients.rs runs tests/clients/redis_py.py with it.
REDIS_PY_MAJOR=8
if ! python3 -c "import redis, sys; sys.exit(redis.__version__.split('.')[0] != '$REDIS_PY_MAJOR')" \
    >/dev/null 2>&1; then
    echo "==> installing redis-py $REDIS_PY_MAJOR from PyPI"
    # Debian's own python3 refuses pip outside a venv (PEP 668) unless told; pyenv's ignores it.
    PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
        python3 -m pip install --quiet "redis>=$REDIS_PY_MAJOR,<$((REDIS_PY_MAJOR + 1))"
fi
echo "==> redis-py $(python3 -c 'import redis; print(redis.__version__)'), $(python3 --version)"

for comp in rustfmt clippy; do
    if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$comp"
    fi
done

# A clean clone builds everything once: incremental compilation's caches (2 GB here) would
# buy nothing but take disk CI's machines lack.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings

echo "==> cargo test (warnings denied)"
# --no-fail-fast: a failing suite must not hide the ones cargo would skip after it.
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" cargo test --all-targets --locked --no-fail-fast

# The KV and RESP suites again, with a three-master Redis Cluster as L2 (tests/support).
echo "==> cargo test --test kv_http --test resp, over a Redis Cluster"
TIERGATE_TEST_L2=cluster RUSTFLAGS="${RUSTFLAGS:-} -D warnings" \
    cargo test --locked --no-fail-fast --test kv_http --test resp

# The fuzz targets (fuzz/, a crate outside the workspace; scripts/fuzz.sh fuzzes with them):
# they must build, and pass over their seeds. A plain build, without cargo-fuzz or sanitizer:
# a libFuzzer binary given files runs each once.
echo "==> fuzz targets: build, and run each over fuzz/seeds/<target>"
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
RUSTFLAGS="${RUSTFLAGS:-} -D warnings" \
    cargo build --manifest-path fuzz/Cargo.toml --locked --bins
for seeds in fuzz/seeds/*/; do
    target=$(basename "$seeds")
    if ! out=$(fuzz/target/debug/"$target" "$seeds"* 2>&1); then
        echo "$out" >&2
        echo "fuzz target $target failed on a seed" >&2
        exit 1
    fi
done
# What the run took on disk, so a CI machine short of it shows how short.
echo "==> disk used: $(du -sh target | cut -f1) target, $(du -sh fuzz/target | cut -f1) fuzz/target"
