# syntax=docker/dockerfile:1
# mvllm as a small container image: the release binary on distroless (glibc, no shell),
# running as a non-root user, logging plain text to stdout, with a HEALTHCHECK on /livez.
#
#   docker build -t mvllm .
#   docker run -d -p 8888:8888 -v $(pwd)/servers.toml:/app/servers.toml mvllm
#
# (the Python mvllm's documented commands, unchanged). `docker compose up` runs it in front of
# simulated servers with Prometheus and Grafana: see compose.yaml.

FROM docker.io/library/rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mvllm \
 && mkdir -p /out \
 && cp target/release/mvllm /out/mvllm

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/mvllm /usr/local/bin/mvllm
WORKDIR /app
ENV MVLLM_CONFIG=/app/servers.toml \
    MVLLM_HOST=0.0.0.0 \
    MVLLM_PORT=8888 \
    MVLLM_CONSOLE=true \
    NO_COLOR=1
EXPOSE 8888
USER 65532:65532
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/mvllm", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/mvllm"]
CMD ["run"]
