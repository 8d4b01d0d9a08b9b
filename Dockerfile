# Portico container image: a release build on Debian 12, run from distroless (glibc, CA
# certificates, no shell) as a non-root user. The image holds no curl: its HEALTHCHECK is
# `portico healthcheck`. Build: `docker build -t portico .` (from the repository root).
#
# Config: mount a *directory* at /etc/portico holding portico.toml (editors and config
# managers replace files by rename, which a single-file bind mount would not see; Portico
# reloads on change). Values can come from the environment (`${VAR:-default}` in the file).
# Without a mounted config, the embedded default listens on $PORTICO_LISTEN and proxies to
# $PORTICO_UPSTREAM.

# The current stable Rust: crates in Cargo.lock may need a newer compiler than rust-version.
FROM rust:1-bookworm AS build
# pingora builds zlib-ng with cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG PORTICO_BUILD_COMMIT=unknown
ENV PORTICO_BUILD_COMMIT=${PORTICO_BUILD_COMMIT}
RUN cargo build --release --locked --bin portico \
 && strip target/release/portico

FROM gcr.io/distroless/cc-debian12:nonroot
ARG PORTICO_VERSION=0.1.0
ARG PORTICO_BUILD_COMMIT=unknown
LABEL org.opencontainers.image.title="portico" \
      org.opencontainers.image.description="Edge reverse proxy and load balancer on pingora, with Fly.io's routing vocabulary" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${PORTICO_VERSION}" \
      org.opencontainers.image.revision="${PORTICO_BUILD_COMMIT}"
COPY --from=build /src/target/release/portico /usr/local/bin/portico
# The embedded default, reachable from outside the container.
ENV PORTICO_LISTEN=0.0.0.0:8080 \
    PORTICO_UPGRADE_SOCKET=/tmp/portico-upgrade.sock
EXPOSE 8080
USER nonroot:nonroot
# SIGTERM drains (shutdown_timeout, 30 s by default): give `docker stop -t` / compose's
# stop_grace_period more than that.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/portico", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["run"]
