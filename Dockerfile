# The logbook image: a static binary on an empty base, run as a non-root user.
# Builds with the classic builder and with BuildKit alike. Every base image is a build
# argument with a public default, so mirrors and air-gapped registries work.
ARG RUST_IMAGE=rust:1.95-slim-bookworm
# Where the runtime's files come from: `native-files` (compiled below, for the builder's
# own platform) or `cross-files` (another platform's binary, cross-compiled outside and
# staged in the context under CROSS_DIR by `cargo xtask build --platform`).
ARG FILES=native-files
ARG CROSS_DIR=Cargo.lock

FROM ${RUST_IMAGE} AS build
# Pipelines in RUN fail when any part fails, not only the last.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
# 0. cargo-auditable embeds the dependency list in the binary, so scanners (Trivy) can see
#    the Rust crates inside a static binary. Installed from crates.io, before anything of
#    the project is copied, so this layer is built once.
RUN CARGO_TERM_COLOR=never cargo install --locked cargo-auditable@0.7.4

ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    RUSTFLAGS="-C target-feature=+crt-static"

# 1. Dependencies, in a layer of their own: manifests plus empty stand-in sources, so this
#    layer is reused until Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
COPY logbook/Cargo.toml logbook/
COPY xtask/Cargo.toml xtask/
RUN mkdir -p logbook/src xtask/src \
 && echo 'fn main() {}' > logbook/src/main.rs \
 && touch logbook/src/lib.rs \
 && echo 'fn main() {}' > xtask/src/main.rs \
 && target="$(rustc -vV | sed -n 's/^host: //p')" \
 && cargo auditable build --release --locked -p logbook --bin logbook --target "$target"

# 2. The service itself. Build facts go in after the dependency layer, so changing them
#    rebuilds only this crate.
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
COPY logbook/src logbook/src
RUN touch logbook/src/main.rs logbook/src/lib.rs \
 && target="$(rustc -vV | sed -n 's/^host: //p')" \
 && LOGBOOK_GIT_REVISION="$REVISION" LOGBOOK_BUILD_TIME="$CREATED" \
    cargo auditable build --release --locked -p logbook --bin logbook --target "$target" \
 && mkdir -p /rootfs/etc /rootfs/tmp /datafs/data \
 && cp "target/$target/release/logbook" /rootfs/logbook \
 && echo 'logbook:x:10001:10001:logbook:/data:/sbin/nologin' > /rootfs/etc/passwd \
 && echo 'logbook:x:10001:' > /rootfs/etc/group \
 && chmod 1777 /rootfs/tmp \
 && /rootfs/logbook version | grep '^logbook '

# 3. The runtime's files, from the build above or from another platform's staged ones.
#    BuildKit builds only the stages the chosen one needs: an image for another platform
#    compiles nothing here and emulates nothing. The classic builder runs every stage, so
#    the cross stage copies Cargo.lock too, which makes it a no-op when not chosen.
FROM scratch AS native-files
COPY --from=build /rootfs /rootfs
COPY --from=build /datafs /datafs

FROM scratch AS cross-files
ARG CROSS_DIR
COPY Cargo.lock ${CROSS_DIR} /

FROM ${FILES} AS files

# 4. Runtime: the binary, a passwd entry for the non-root user, /tmp and the data directory.
#    Whole trees are copied so the directories keep their modes (/tmp is 1777, and Docker's
#    tmpfs takes its mode from the directory it covers).
FROM scratch
COPY --from=files /rootfs /
COPY --from=files --chown=10001:10001 /datafs /
USER 10001:10001
ENV LOGBOOK_BIND=0.0.0.0 \
    LOGBOOK_PORT=8080 \
    LOGBOOK_DB_PATH=/data/logbook.db \
    SQLITE_TMPDIR=/tmp
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 CMD ["/logbook", "healthcheck"]
ENTRYPOINT ["/logbook"]

ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=https://github.com/logbook-dev/logbook
LABEL org.opencontainers.image.title="logbook" \
      org.opencontainers.image.description="An append-only journal over HTTP on embedded SQLite" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"
