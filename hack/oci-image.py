#!/usr/bin/env python3
"""Builds a single-layer OCI image archive (OCI image layout in a tar) from files, without a container
daemon: what `ctr images import`, `kind load image-archive`, `skopeo copy oci-archive:` and registries
accept. The Dockerfile stays the recipe for registries; this is how `make e2e` gets the same static
binary onto a node that has no Docker.

    hack/oci-image.py --out image.tar --name ghcr.io/keyvault-csi/keyvault-csi:e2e --arch amd64 \\
        --entrypoint /usr/local/bin/keyvault-csi target/release-static/keyvault-csi-linux-amd64:/usr/local/bin/keyvault-csi

The layer is reproducible: fixed timestamps, owner root, sorted entries, gzip without a time stamp.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def layer(files):
    """An uncompressed tar of (source, destination) pairs plus their parent directories and /tmp."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = {"tmp"}
        for _, dest in files:
            parts = dest.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mtime = tarfile.DIRTYPE, EPOCH
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for src, dest in sorted(files, key=lambda f: f[1]):
            data = open(src, "rb").read()
            info = tarfile.TarInfo(dest.strip("/"))
            info.size, info.mtime = len(data), EPOCH
            info.mode = 0o755 if os.access(src, os.X_OK) else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def blob(out, data, media_type):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
    info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
    out.addfile(info, io.BytesIO(data))
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", required=True, help="full image reference, e.g. registry/repo:tag")
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--entrypoint", required=True)
    ap.add_argument("files", nargs="+", help="SOURCE:DESTINATION")
    args = ap.parse_args()
    files = [tuple(f.split(":", 1)) for f in args.files]
    for src, _ in files:
        if not os.path.isfile(src):
            ap.error(f"{src}: no such file")

    raw = layer(files)
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as z:
        z.write(raw)
    config = {
        "architecture": args.arch,
        "os": "linux",
        "config": {"Entrypoint": [args.entrypoint], "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    with tarfile.open(args.out, "w") as out:
        layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
        info = tarfile.TarInfo("oci-layout")
        info.size, info.mtime = len(layout), EPOCH
        out.addfile(info, io.BytesIO(layout))
        cfg = blob(out, json.dumps(config, sort_keys=True).encode(), "application/vnd.oci.image.config.v1+json")
        lyr = blob(out, gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg,
            "layers": [lyr],
        }
        man = blob(out, json.dumps(manifest, sort_keys=True).encode(), manifest["mediaType"])
        man["platform"] = {"architecture": args.arch, "os": "linux"}
        tag = args.name.rsplit(":", 1)[1] if ":" in args.name.rsplit("/", 1)[-1] else "latest"
        man["annotations"] = {"io.containerd.image.name": args.name, "org.opencontainers.image.ref.name": tag}
        index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                            "manifests": [man]}).encode()
        info = tarfile.TarInfo("index.json")
        info.size, info.mtime = len(index), EPOCH
        out.addfile(info, io.BytesIO(index))
    print(f"{args.out}: {args.name} ({os.path.getsize(args.out)} bytes, layer {lyr['digest'][:19]})")


if __name__ == "__main__":
    main()
