# sessiongate: build with the Rust toolchain, run on a slim Debian as a
# non-root user. The image also holds `echo_upstream`, the demo app of
# docker-compose.yml that answers with the headers it received.

FROM rust:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY examples examples
COPY bench bench
# examples/echo_upstream.rs includes tests/support/echo.rs.
COPY tests/support tests/support
RUN cargo build --release --locked --bin sessiongate --example echo_upstream

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sessiongate
COPY --from=build /src/target/release/sessiongate /usr/local/bin/sessiongate
COPY --from=build /src/target/release/examples/echo_upstream /usr/local/bin/echo_upstream
COPY proxy.toml /etc/sessiongate/proxy.toml
USER sessiongate
# proxy.toml reads these (and REDIS_URL, SESSION_SECRET, UPSTREAM_ADDR).
ENV LISTEN_ADDR=0.0.0.0:8080 \
    ADMIN_ADDR=0.0.0.0:9100
EXPOSE 8080 9100
# Pid file and upgrade socket default to /tmp/sessiongate-10001 (created mode 0700).
CMD ["sessiongate", "run", "-c", "/etc/sessiongate/proxy.toml"]
