# syntax=docker/dockerfile:1
# One image holding every binary of the workspace (orchestrator, the workers, the Telegram
# stand-in, saga-platform, saga-bench). A Kubernetes Deployment picks its binary with `command`,
# e.g. ["/usr/local/bin/orchestrator"]. Without one it runs the one-process saga-platform:
#   docker run -e SAGA_GATEWAY_ADDR=0.0.0.0:8080 -e SAGA_DATABASE_URL=... -p 8080:8080 IMAGE
#
#   docker build -t reward-saga:dev .
#
# Both base images are pinned by tag and digest; refresh the digests together with the Rust
# version (`docker buildx imagetools inspect rust:1.95-bookworm`).

FROM rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS builder
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binaries are copied out
# of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -perm -u+x -exec cp {} /out/ \; \
    && ls -l /out

# glibc, libgcc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f AS runtime
LABEL org.opencontainers.image.title="reward-saga" \
      org.opencontainers.image.description="Reward saga platform: orchestrator and workers" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ /usr/local/bin/
# distroless's "nonroot" user; Kubernetes checks runAsNonRoot against this number.
USER 65532:65532
EXPOSE 8080 8090 8091 8092 8093 8094 8095 8096
CMD ["/usr/local/bin/saga-platform"]
