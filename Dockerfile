# meshload container image: a static binary on an empty base.
#
#   docker build -t meshload:0.1.0 .
#
# Stage 1 builds on Alpine, whose Rust targets musl and links it statically; stage 2 is
# `scratch` plus CA certificates (for S3 and HTTPS Prometheus endpoints).
FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev build-base cmake perl clang ca-certificates
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p meshload \
 && strip target/release/meshload target/release/meshload-node

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/meshload /meshload
COPY --from=build /src/target/release/meshload-node /meshload-node
USER 65532:65532
EXPOSE 9080 8080
ENTRYPOINT ["/meshload"]
CMD ["node"]
