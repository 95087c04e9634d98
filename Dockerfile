# kiln's image: `docker build -t kiln .`
#
# Stage 1 builds the dependencies alone first (a layer that only changes with
# Cargo.toml / Cargo.lock), then kiln itself. Stage 2 is a slim runtime with
# CA certificates (S3 over HTTPS, OTLP, JWKS) running as a non-root user.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# The dependency layer: a stub crate with the real manifest and build script.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo 'fn main() {}' > benches/hot_paths.rs \
    && cargo build --release --locked \
    && rm -rf src benches
# kiln itself.
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
COPY config ./config
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/kiln target/release/kiln-measure /usr/local/bin/

FROM debian:bookworm-slim AS runtime
# bubblewrap: the sandbox `kiln worker` runs every action in (one image
# serves both the server and the workers).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kiln \
    && useradd --system --uid 10001 --gid kiln --home-dir /var/lib/kiln --shell /usr/sbin/nologin kiln \
    && mkdir -p /var/lib/kiln /etc/kiln \
    && chown kiln:kiln /var/lib/kiln
# kiln-measure: the helper `kiln worker` runs each action under, to report
# what the action cost (it must sit beside kiln).
COPY --from=build /usr/local/bin/kiln /usr/local/bin/kiln-measure /usr/local/bin/
COPY config/default.yaml /etc/kiln/kiln.yaml
USER 10001:10001
WORKDIR /var/lib/kiln
# glibc's default of eight malloc arenas per CPU kept ~90 MiB of freed
# memory under a 16-client soak (BENCHMARKS.md); two cost no measurable CPU.
ENV MALLOC_ARENA_MAX=2
# gRPC (REAPI, ByteStream, BES, Bots) and HTTP (/metrics, /healthz, build-event API).
EXPOSE 50051 8080
VOLUME ["/var/lib/kiln"]
ENTRYPOINT ["kiln"]
CMD ["serve", "--config", "/etc/kiln/kiln.yaml", "--listen", "0.0.0.0:50051", "--http-listen", "0.0.0.0:8080", "--data-dir", "/var/lib/kiln"]
