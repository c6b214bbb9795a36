# syntax=docker/dockerfile:1
# confab node image: a release build on Debian, run as an unprivileged user.
#   docker build -t confab .
# Used by docker-compose.yml (three nodes on MongoDB + Redis behind HAProxy).

FROM rust:1-bookworm AS build
WORKDIR /src
# The whole workspace (the bench crate is a member); .dockerignore keeps target/ and data out.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p confab \
    && install -D -m 0755 target/release/confab /out/confab

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/confab --create-home confab
COPY --from=build /out/confab /usr/local/bin/confab
COPY config/cluster.toml /etc/confab/cluster.toml
USER confab
WORKDIR /var/lib/confab
ENV CONFAB__SERVER__BIND=0.0.0.0:8080 \
    CONFAB__STORAGE__PATH=/var/lib/confab/data
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=2s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/readyz >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/confab"]
CMD ["serve"]
