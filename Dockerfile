# Switchboard container image.
#   docker build -t switchboard .
#   docker run -p 8080:8080 -v switchboard-data:/var/lib/switchboard \
#     -e SWITCHBOARD__ENVIRONMENT=production -e SWITCHBOARD__AUTH__JWT_SECRET=... switchboard
# See docs/OPERATIONS.md.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchboard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/switchboard --shell /usr/sbin/nologin switchboard \
    && mkdir -p /var/lib/switchboard /etc/switchboard \
    && chown switchboard:switchboard /var/lib/switchboard
COPY --from=builder /src/target/release/switchboard /usr/local/bin/switchboard
COPY config.toml /etc/switchboard/config.toml

# Listen on every interface inside the container; keep the database and the generated
# development secret on the volume. SWITCHBOARD_CONFIG makes `migrate` and `token`
# (docker exec ... switchboard token alice) read the same file as `serve`.
ENV SWITCHBOARD__SERVER__HOST=0.0.0.0 \
    SWITCHBOARD__SERVER__DATA_DIR=/var/lib/switchboard \
    SWITCHBOARD_CONFIG=/etc/switchboard/config.toml

WORKDIR /var/lib/switchboard
VOLUME ["/var/lib/switchboard"]
USER switchboard
EXPOSE 8080
# docker stop sends SIGTERM: clients are closed with 1012 (spread over
# server.drain_window) and pending writes flushed; give it time: docker stop -t 15.
STOPSIGNAL SIGTERM
# `switchboard health` asks the broker's own /health on the configured port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["switchboard", "health"]
ENTRYPOINT ["switchboard"]
CMD ["serve", "--config", "/etc/switchboard/config.toml"]
