# The node plugin image: one static binary on distroless/static (no shell, no package manager).
# Build the binaries first (`make release`), then:
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/keyvault-csi:<tag> .
# The chart runs it privileged (tmpfs mounts with Bidirectional propagation) with a read-only root
# filesystem: it writes only to the kubelet and plugin host paths.
FROM gcr.io/distroless/static-debian12
ARG TARGETARCH
COPY target/release-static/keyvault-csi-linux-${TARGETARCH} /usr/local/bin/keyvault-csi
ENTRYPOINT ["/usr/local/bin/keyvault-csi"]
