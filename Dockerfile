# syntax=docker/dockerfile:1
#
# The chatq image: one binary, every role (`serve`, `ingress`, `worker`, `migrate`, `keys`, ...).
#
#   docker build -t chatq:local .
#   docker run --rm -p 8080:8080 -e CHATQ_DATABASE_URL=... -e CHATQ_NATS_URL=... chatq:local
#
# compose.yaml builds and runs it. Needs BuildKit (the default builder of current Docker) for the
# cache mounts below.

# --- build -----------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# sqlx checks queries against the committed .sqlx/ data: no database during the build.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never

# The whole workspace (.dockerignore keeps target/ and .git out), so Cargo can load every member,
# but only the chatq binary is built: the image carries neither the benchmark harness (bench/)
# nor anything it alone needs. The cache mounts keep the crates.io downloads and compiled
# dependencies between builds, so a source change recompiles only chatq's own crates; --locked
# builds exactly what Cargo.lock says.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin chatq \
    && install -D -m 0755 target/release/chatq /out/chatq

# --- run -------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# CA certificates for TLS to the LLM provider (and to Postgres/NATS when they use TLS).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Run as an unprivileged user; chatq writes nothing to disk.
RUN groupadd --system --gid 10001 chatq \
    && useradd --system --uid 10001 --gid chatq --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin chatq

COPY --from=builder /out/chatq /usr/local/bin/chatq

USER chatq:chatq
# In a container the ingress must listen on all interfaces to be reachable.
ENV CHATQ_HTTP_ADDR=0.0.0.0:8080 \
    CHATQ_LOG_FORMAT=json
EXPOSE 8080

ENTRYPOINT ["chatq"]
CMD ["serve"]
