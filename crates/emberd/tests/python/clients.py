"""containerd's API through Python grpcio, with stubs generated from the
repository's proto/ at run time. Prints one JSON object: what each call gave.

usage: clients.py SOCKET PROTO_DIR WORK_DIR [AUTHORITY]

With AUTHORITY, the channel sends it as :authority (some grpcio versions send
the socket path there); without it, the channel has grpcio's default options.
"""

import json
import os
import sys

import grpc
from grpc_tools import protoc

PREFIX = "github.com/containerd/containerd/api/"
PROTOS = [
    "services/version/v1/version.proto",
    "services/namespaces/v1/namespace.proto",
    "services/containers/v1/containers.proto",
]


def generate(proto_dir, work):
    """Copies the protos under an importable package name and runs protoc."""
    src = os.path.join(work, "proto")
    out = os.path.join(work, "gen")
    os.makedirs(out, exist_ok=True)
    for root, _, files in os.walk(proto_dir):
        for f in files:
            if not f.endswith(".proto"):
                continue
            rel = os.path.relpath(os.path.join(root, f), proto_dir)
            # Importable names: no dots, and no clash with the grpc package.
            rel = rel.replace(PREFIX, "ctrd/").replace("grpc/health/", "healthpb/")
            dst = os.path.join(src, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with open(os.path.join(root, f)) as i, open(dst, "w") as o:
                o.write(i.read().replace(PREFIX, "ctrd/"))
    files = ["ctrd/" + p for p in PROTOS] + ["healthpb/v1/health.proto"]
    args = ["protoc", "-I" + src, "--python_out=" + out, "--grpc_python_out=" + out]
    if protoc.main(args + files) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out)


def outcome(call):
    try:
        return {"ok": call()}
    except grpc.RpcError as e:
        return {"code": e.code().name}


def main():
    sock, proto_dir, work = sys.argv[1:4]
    generate(proto_dir, work)
    from ctrd.services.version.v1 import version_pb2_grpc
    from ctrd.services.namespaces.v1 import namespace_pb2 as ns_pb2
    from ctrd.services.namespaces.v1 import namespace_pb2_grpc as ns_grpc
    from ctrd.services.containers.v1 import containers_pb2 as c_pb2
    from ctrd.services.containers.v1 import containers_pb2_grpc as c_grpc
    from healthpb.v1 import health_pb2, health_pb2_grpc
    from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

    opts = []
    if len(sys.argv) > 4:
        opts.append(("grpc.default_authority", sys.argv[4]))
    target = "unix://" + sock
    ch = grpc.insecure_channel(target, options=opts)
    md = [("containerd-namespace", "py")]
    r = {}
    r["version"] = outcome(
        lambda: bool(version_pb2_grpc.VersionStub(ch).Version(empty_pb2.Empty()).version)
    )
    ns = ns_grpc.NamespacesStub(ch)
    r["ns_get_unknown"] = outcome(
        lambda: dict(ns.Get(ns_pb2.GetNamespaceRequest(name="nobody")).namespace.labels)
    )
    # With a namespace header, as ctr sends one: containerd 1.6 fails to publish
    # the event of a create without one (and says UNKNOWN, having created it).
    r["ns_create"] = outcome(
        lambda: ns.Create(
            ns_pb2.CreateNamespaceRequest(
                namespace=ns_pb2.Namespace(name="py", labels={"k": "v"})
            ),
            metadata=md,
        ).namespace.name
    )
    r["ns_create_again"] = outcome(
        lambda: ns.Create(
            ns_pb2.CreateNamespaceRequest(namespace=ns_pb2.Namespace(name="py")),
            metadata=md,
        ).namespace.name
    )
    r["ns_get"] = outcome(
        lambda: dict(ns.Get(ns_pb2.GetNamespaceRequest(name="py")).namespace.labels)
    )
    # containerd answers an update with an empty namespace: only the outcome and
    # what Get then shows are compared.
    update = lambda name, labels, paths: ns.Update(
        ns_pb2.UpdateNamespaceRequest(
            namespace=ns_pb2.Namespace(name=name, labels=labels),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        ),
        metadata=md,
    ) is not None
    r["ns_update_label"] = outcome(lambda: update("py", {"k2": "v2"}, ["labels.k2"]))
    r["ns_update_name"] = outcome(lambda: update("py", {}, ["name"]))
    # Labelling a namespace without a record makes one, as on containerd.
    r["ns_update_new"] = outcome(lambda: update("py-new", {"n": "1"}, ["labels.n"]))
    r["ns_get_updated"] = outcome(
        lambda: [
            dict(ns.Get(ns_pb2.GetNamespaceRequest(name=n)).namespace.labels)
            for n in ("py", "py-new")
        ]
    )
    r["ns_list"] = outcome(
        lambda: sorted(n.name for n in ns.List(ns_pb2.ListNamespacesRequest()).namespaces)
    )

    # A spec of 8 MiB: over gRPC's usual 4 MiB, under containerd's 16 MiB. The
    # answer carries it back, so this channel takes large messages in.
    big = grpc.insecure_channel(
        target, options=opts + [("grpc.max_receive_message_length", 64 << 20)]
    )
    containers = c_grpc.ContainersStub(big)
    spec = any_pb2.Any(
        type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
        value=b'{"ociVersion":"1.0.2","annotations":{"pad":"'
        + b"x" * (8 << 20)
        + b'"}}',
    )
    c = c_pb2.Container(
        id="big",
        runtime=c_pb2.Container.Runtime(name="io.containerd.runc.v2"),
        spec=spec,
    )
    r["container_create_8mib"] = outcome(
        lambda: len(
            containers.Create(c_pb2.CreateContainerRequest(container=c), metadata=md)
            .container.spec.value
        )
    )
    r["container_get_8mib"] = outcome(
        lambda: containers.Get(c_pb2.GetContainerRequest(id="big"), metadata=md)
        .container.spec.value
        == spec.value
    )
    # Over 16 MiB: refused by the server.
    huge = c_pb2.Container(
        id="huge",
        runtime=c_pb2.Container.Runtime(name="io.containerd.runc.v2"),
        spec=any_pb2.Any(type_url=spec.type_url, value=b"x" * (17 << 20)),
    )
    r["container_create_17mib"] = outcome(
        lambda: containers.Create(
            c_pb2.CreateContainerRequest(container=huge), metadata=md
        ).container.id
    )
    r["container_delete"] = outcome(
        lambda: containers.Delete(c_pb2.DeleteContainerRequest(id="big"), metadata=md)
        is not None
    )
    r["ns_delete"] = outcome(
        lambda: ns.Delete(ns_pb2.DeleteNamespaceRequest(name="py"), metadata=md)
        is not None
    )

    raw = ch.unary_unary("/containerd.services.nope.v1.Nope/Nothing")
    r["unknown_service"] = outcome(lambda: raw(b"") is not None)
    # containerd 2.2's mount manager: not served (by containerd before 2.2 either).
    raw = ch.unary_unary("/containerd.services.mounts.v1.Mounts/Activate")
    r["mounts"] = outcome(lambda: raw(b"") is not None)
    raw = ch.unary_unary("/containerd.services.version.v1.Version/Nothing")
    r["unknown_method"] = outcome(lambda: raw(b"") is not None)

    health = health_pb2_grpc.HealthStub(ch)
    r["health"] = outcome(
        lambda: health_pb2.HealthCheckResponse.ServingStatus.Name(
            health.Check(health_pb2.HealthCheckRequest()).status
        )
    )
    r["health_unknown_service"] = outcome(
        lambda: health.Check(health_pb2.HealthCheckRequest(service="nope")).status
    )
    print(json.dumps(r, sort_keys=True))


if __name__ == "__main__":
    main()
