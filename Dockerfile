# syntax=docker/dockerfile:1
# tiergate: build with `docker build -t tiergate .` (BuildKit, the default builder since
# Docker 23), run with e.g.
#   docker run --stop-timeout 35 -p 8080:8080 -p 6380:6380 -e TIERGATE_L2_URL=redis://redis:6379 tiergate
# (--stop-timeout: SIGTERM drains for up to shutdown.grace, 30s; Docker's default 10s would
# kill it mid-drain.)
# Without TIERGATE_L2_URL it runs the standalone memory mode. Every config key can be set as
# TIERGATE_<SECTION>_<KEY>; the defaults are in /etc/tiergate/tiergate.toml.
#
# Clients of a container never come from its loopback, and protected mode (on by default)
# serves a door without auth to loopback clients only: configure auth first, e.g.
#   -e TIERGATE_AUTH_TOKENS='[{name="svc", token="<32+ chars>", read=["*"], write=["*"]}]'
#   -e TIERGATE_RESP_REQUIREPASS='<password>'
# or, where the network alone decides who can reach the ports, say so:
#   -e TIERGATE_AUTH_PROTECTED_MODE=false
# The admin port listens on every interface here (below): give it a token too,
#   -e TIERGATE_ADMIN_TOKEN='<32+ chars>'
# and scrape /metrics with it (Authorization: Bearer). The probes /healthz and /readyz (the
# HEALTHCHECK) need none; without a token, hot key names are shown to loopback clients only.

# --- build ---------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The commit for tiergate_build_info: .git is not sent to the builder (.dockerignore), so pass
# it: docker build --build-arg GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG GIT_COMMIT=unknown
ENV GIT_COMMIT=${GIT_COMMIT}
COPY . .
# The registry and target directory live in BuildKit cache mounts: a rebuild after a source
# change recompiles tiergate only, not its dependencies. The binary is copied out of the
# cache mount, which is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tiergate \
    && cp target/release/tiergate /usr/local/bin/tiergate

# --- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# curl for the HEALTHCHECK; nothing else is needed at run time (no TLS: Redis and clients
# are reached over plain TCP inside the deployment's network). Not pinned to a Debian
# version: bookworm's security updates replace old versions in the archive, and a pinned
# build would break on the next one.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tiergate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin tiergate
COPY --from=build /usr/local/bin/tiergate /usr/local/bin/tiergate
COPY config/tiergate.toml /etc/tiergate/tiergate.toml
ENV TIERGATE_CONFIG=/etc/tiergate/tiergate.toml \
    # In a container the network namespace is the boundary: serve metrics and probes on
    # every interface, and publish 9090 only to the monitoring network (and set
    # TIERGATE_ADMIN_TOKEN, see the top of this file).
    TIERGATE_ADMIN_LISTEN=0.0.0.0:9090
# Numeric, so a host's runtime can check it is not root without reading /etc/passwd.
USER 10001:10001
# HTTP data port, Redis-protocol port, admin port (/metrics, /healthz, /readyz).
EXPOSE 8080 6380 9090
# The probe goes where admin.listen is, read from TIERGATE_ADMIN_LISTEN at each run (so
# `-e TIERGATE_ADMIN_LISTEN=0.0.0.0:9191` moves it too); a wildcard address is reached over
# loopback. An admin.listen set only in a mounted config file is not seen here: set the
# variable as well.
HEALTHCHECK --interval=10s --timeout=2s --start-period=5s --retries=3 \
    CMD addr="${TIERGATE_ADMIN_LISTEN:-127.0.0.1:9090}"; \
        case "$addr" in \
            0.0.0.0:*) addr="127.0.0.1:${addr##*:}" ;; \
            "[::]:"*) addr="[::1]:${addr##*:}" ;; \
        esac; \
        curl -fsS -o /dev/null "http://$addr/healthz" || exit 1
# SIGTERM drains: in-flight requests get shutdown.grace (30s) to finish. Docker's own wait
# before SIGKILL is 10s, shorter than that, so give it more when starting the container,
#   docker run --stop-timeout 35 ...      (or `docker stop -t 35`; compose: stop_grace_period: 35s)
# and keep it above TIERGATE_SHUTDOWN_GRACE if you change that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tiergate"]
