#!/usr/bin/python3
"""A CRI client for fdgrab's tests, and an OCI image writer.

  cri_call.py call SOCKET METHOD REQ  request JSON in file REQ, response JSON on stdout
  cri_call.py image ROOTFS OUT NAME   writes an OCI image archive of ROOTFS (one layer)

The gRPC stubs are generated from cri_subset.proto (next to this file) into a
temporary directory at each call; that takes well under a second.
"""
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def stubs(tmp):
    from grpc_tools import protoc

    rc = protoc.main(["protoc", "-I" + HERE, "--python_out=" + tmp,
                      "--grpc_python_out=" + tmp, os.path.join(HERE, "cri_subset.proto")])
    if rc != 0:
        sys.exit("protoc failed on cri_subset.proto")
    sys.path.insert(0, tmp)
    import cri_subset_pb2
    import cri_subset_pb2_grpc
    return cri_subset_pb2, cri_subset_pb2_grpc


def call(socket, method, request):
    import grpc
    from google.protobuf import json_format

    with tempfile.TemporaryDirectory() as tmp:
        pb2, pb2_grpc = stubs(tmp)
        service = pb2.DESCRIPTOR.services_by_name["RuntimeService"]
        m = service.methods_by_name[method]
        req_cls = getattr(pb2, m.input_type.name)
        resp_cls = getattr(pb2, m.output_type.name)
        with open(request) as f:
            req = json_format.Parse(f.read(), req_cls())
        with grpc.insecure_channel("unix://" + socket) as ch:
            rpc = ch.unary_unary("/runtime.v1.RuntimeService/" + method,
                                 request_serializer=req_cls.SerializeToString,
                                 response_deserializer=resp_cls.FromString)
            try:
                resp = rpc(req, timeout=60)
            except grpc.RpcError as e:
                sys.exit("%s: %s: %s" % (method, e.code(), e.details()))
        print(json_format.MessageToJson(resp, preserving_proto_field_name=True))


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo("blobs/sha256/" + digest)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return {"digest": "sha256:" + digest, "size": len(data)}


def image(rootfs, path, name):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        for entry in sorted(os.listdir(rootfs)):
            t.add(os.path.join(rootfs, entry), arcname=entry)
    layer = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine,
                                                                  os.uname().machine),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sleep", "86400"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    with tarfile.open(path, "w") as out:
        lay = blob(out, layer)
        lay["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
        cfg = blob(out, config)
        cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
        manifest = json.dumps({"schemaVersion": 2,
                               "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": cfg, "layers": [lay]}).encode()
        man = blob(out, manifest)
        man["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
        man["annotations"] = {"io.containerd.image.name": name,
                              "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]}
        for fname, data in [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                            ("index.json", json.dumps({"schemaVersion": 2,
                                                       "manifests": [man]}).encode())]:
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "call":
        call(sys.argv[2], sys.argv[3], sys.argv[4])
    elif len(sys.argv) == 5 and sys.argv[1] == "image":
        image(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
