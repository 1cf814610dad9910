# syntax=docker/dockerfile:1
# Build stage: the release binary, built from the locked dependency tree.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
RUN cargo build --release --locked --bin smsgate

# Runtime stage: the binary, its configuration and CA roots; runs as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin smsgate
WORKDIR /app
COPY --from=build /src/target/release/smsgate /usr/local/bin/smsgate
COPY config config
USER smsgate
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["smsgate", "healthcheck", "--config", "config/docker.toml"]
ENTRYPOINT ["smsgate"]
CMD ["serve", "--config", "config/docker.toml"]
