#!/usr/bin/python3
"""A CRI client for fdgrab's tests.

  cri_call.py SOCKET METHOD REQ.json   prints RuntimeService/METHOD's answer as JSON

The gRPC stubs are generated from cri_subset.proto (next to this file) into a
temporary directory at each call; that takes well under a second.
"""
import os
import sys
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
    return cri_subset_pb2


def call(socket, method, request):
    import grpc
    from google.protobuf import json_format

    with tempfile.TemporaryDirectory() as tmp:
        pb2 = stubs(tmp)
        m = pb2.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name[method]
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


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    call(sys.argv[1], sys.argv[2], sys.argv[3])
