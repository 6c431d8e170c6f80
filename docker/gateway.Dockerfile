FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY tests ./tests
COPY config ./config
RUN cargo build --release --locked --bin jit-gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/jit-gateway /usr/local/bin/jit-gateway
COPY docker/gateway-entrypoint.sh /usr/local/bin/gateway-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/gateway-entrypoint.sh"]
