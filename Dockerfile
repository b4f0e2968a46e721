# logdist: one image with all three binaries (distributor, analyzer, agent-sim).
#   docker build -t logdist .
#   docker compose up            # see compose.yaml
# Multi-stage: the Rust toolchain stays in the builder; the runtime is debian-slim with the
# binaries, CA certificates (for tls:// URLs) and a non-root user.

# The newest stable Rust 1.x (the workspace needs 1.89 or newer; some dependencies may need more).
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# --locked: build exactly the dependency versions in Cargo.lock.
RUN cargo build --release --locked --bin distributor --bin analyzer --bin agent-sim \
 && mkdir -p /out \
 && cp target/release/distributor target/release/analyzer target/release/agent-sim /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin logdist
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
# Logs go to stderr; RUST_LOG filters them.
ENV RUST_LOG=info
# No ENTRYPOINT: the command names the binary, e.g. `distributor run` or `analyzer --id 1 …`.
CMD ["distributor", "run"]
