#!/usr/bin/python3
"""Writes a one-layer OCI image archive (an OCI image layout in a tar) of a
directory, with no base image.

  oci-image.py ROOTFS OUT.tar NAME [--entrypoint JSON] [--cmd JSON]

ROOTFS becomes the image's only layer, as is (owners, modes, symlinks). NAME is the
full reference (e.g. docker.io/library/fdgrab-agent:0.1.0); it is stored in the
`io.containerd.image.name` and `org.opencontainers.image.ref.name` annotations, which
`ctr images import` and `skopeo copy oci-archive:OUT.tar ...` read. Only the Python
standard library is needed.
"""
import argparse
import hashlib
import io
import json
import os
import tarfile


def add(out, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    out.addfile(info, io.BytesIO(data))


def blob(out, data, media_type):
    digest = hashlib.sha256(data).hexdigest()
    add(out, "blobs/sha256/" + digest, data)
    return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}


def layer_of(rootfs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for entry in sorted(os.listdir(rootfs)):
            t.add(os.path.join(rootfs, entry), arcname=entry)
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rootfs")
    p.add_argument("out")
    p.add_argument("name")
    p.add_argument("--entrypoint", type=json.loads, default=None)
    p.add_argument("--cmd", type=json.loads, default=None)
    a = p.parse_args()

    layer = layer_of(a.rootfs)
    machine = os.uname().machine
    config = {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]}
    if a.entrypoint is not None:
        config["Entrypoint"] = a.entrypoint
    if a.cmd is not None:
        config["Cmd"] = a.cmd
    image_config = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers",
                   "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }).encode()
    with tarfile.open(a.out, "w") as out:
        lay = blob(out, layer, "application/vnd.oci.image.layer.v1.tar")
        cfg = blob(out, image_config, "application/vnd.oci.image.config.v1+json")
        manifest = json.dumps({"schemaVersion": 2,
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": cfg, "layers": [lay]}).encode()
        man = blob(out, manifest, "application/vnd.oci.image.manifest.v1+json")
        man["annotations"] = {"io.containerd.image.name": a.name,
                              "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1]}
        add(out, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add(out, "index.json", json.dumps({"schemaVersion": 2, "manifests": [man]}).encode())


if __name__ == "__main__":
    main()
