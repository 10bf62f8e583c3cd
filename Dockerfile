# The causeway image: a release build in a full Rust image, copied into a slim runtime image that
# runs as an unprivileged user. Build: docker build -t causeway:latest .
FROM rust:1.95-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev perl \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin causeway \
 && strip target/release/causeway \
 && cp target/release/causeway /causeway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 causeway \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin causeway \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /causeway /usr/local/bin/causeway
USER 10001:10001
ENV CAUSEWAY_DATA_DIR=/data \
    CAUSEWAY_LISTEN=0.0.0.0:8080
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/causeway"]
CMD ["serve"]
