# syntax=docker/dockerfile:1
# Build stage: the release binary from the locked dependency tree. BuildKit cache mounts keep
# the crates.io downloads and the compiled dependencies between builds, so a change to
# smsgate's own code recompiles smsgate alone.
FROM rust:1.95-slim-bookworm AS build
# The commit `smsgate --version` and smsgate_build_info name (the build has no .git):
# docker build --build-arg SMSGATE_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG SMSGATE_COMMIT=unknown
ENV SMSGATE_COMMIT=${SMSGATE_COMMIT}
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY migrations migrations
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin smsgate \
 && cp target/release/smsgate /smsgate

# Runtime stage: distroless (glibc, CA roots, no shell, no package manager), as its non-root
# user. smsgate writes only a private socket directory under /tmp (a verified TLS connection to
# PostgreSQL), so it runs with a read-only root and /tmp in memory.
FROM gcr.io/distroless/cc-debian12:nonroot
WORKDIR /app
COPY --from=build /smsgate /usr/local/bin/smsgate
COPY config config
USER nonroot:nonroot
# Public (ingress, health), metrics, and the admin API when `admin.listen` names it.
EXPOSE 8080 9464 8081
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["smsgate", "healthcheck", "--config", "config/docker.toml"]
ENTRYPOINT ["smsgate"]
CMD ["serve", "--config", "config/docker.toml"]
