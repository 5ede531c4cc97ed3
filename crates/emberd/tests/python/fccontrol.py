"""firecracker-containerd's VM control API (service `Firecracker`) through Python
grpcio against emberd, with stubs generated at run time. Prints one JSON object:
what each call gave.

usage: fccontrol.py SOCKET FC_PROTO_DIR EMBER_PROTO_DIR WORK_DIR MODE [VMID]

FC_PROTO_DIR holds firecracker.proto and types.proto, and fccontrol.proto either
beside them (Ember's restatement) or under service/fccontrol/ (the layout of
firecracker-containerd's proto/ directory). EMBER_PROTO_DIR holds ember_vm.proto
(Ember's VMs service). MODE is `errors` (calls that need no VM) or `all` (a VM's
whole life, with VMID as its id). The channel has grpcio's default options.
"""

import json
import os
import shutil
import sys

import grpc
import grpc_tools
from grpc_tools import protoc


def generate(fc_dir, ember_dir, work):
    out = os.path.join(work, "gen")
    ember_only = os.path.join(work, "ember")
    os.makedirs(out, exist_ok=True)
    os.makedirs(ember_only, exist_ok=True)
    # Alone in its directory, so the other files of Ember's directory never
    # shadow those of FC_PROTO_DIR.
    shutil.copy(os.path.join(ember_dir, "ember_vm.proto"), ember_only)
    includes = [fc_dir]
    nested = os.path.join(fc_dir, "service", "fccontrol")
    if os.path.exists(os.path.join(nested, "fccontrol.proto")):
        includes.insert(0, nested)
    includes += [ember_only, os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")]
    files = ["fccontrol.proto", "firecracker.proto", "types.proto", "ember_vm.proto"]
    args = ["protoc"] + ["-I" + i for i in includes]
    args += ["--python_out=" + out, "--grpc_python_out=" + out]
    if protoc.main(args + files) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, out)


def outcome(call):
    try:
        return {"ok": call()}
    except grpc.RpcError as e:
        return {"code": e.code().name, "message": e.details()}


def code(call):
    """Only the status code of a call (OK when it succeeded)."""
    r = outcome(call)
    return r.get("code", "OK")


def main():
    sock, fc_dir, ember_dir, work, mode = sys.argv[1:6]
    vmid = sys.argv[6] if len(sys.argv) > 6 else "vm-py"
    generate(fc_dir, ember_dir, work)
    import fccontrol_pb2_grpc
    import firecracker_pb2 as fc
    import types_pb2 as types
    import ember_vm_pb2 as ev
    import ember_vm_pb2_grpc as ev_grpc

    ch = grpc.insecure_channel("unix://" + sock)
    stub = fccontrol_pb2_grpc.FirecrackerStub(ch)
    vms = ev_grpc.VMsStub(ch)
    md = [("containerd-namespace", "fcpy")]
    r = {}

    def call(method, req):
        return getattr(stub, method)(req, metadata=md, timeout=120)

    # Calls that need no VM.
    r["info_unknown"] = code(lambda: call("GetVMInfo", fc.GetVMInfoRequest(VMID="nosuchvm")))
    r["stop_unknown"] = code(lambda: call("StopVM", fc.StopVMRequest(VMID="nosuchvm")))
    r["pause_unknown"] = code(lambda: call("PauseVM", fc.PauseVMRequest(VMID="nosuchvm")))
    r["metadata_unknown"] = code(
        lambda: call("SetVMMetadata", fc.SetVMMetadataRequest(VMID="nosuchvm", Metadata="{}"))
    )
    r["balloon_unknown"] = code(
        lambda: call("GetBalloonStats", fc.GetBalloonStatsRequest(VMID="nosuchvm"))
    )
    r["info_bad_id"] = code(lambda: call("GetVMInfo", fc.GetVMInfoRequest(VMID="bad/id")))
    r["create_bad_id"] = code(lambda: call("CreateVM", fc.CreateVMRequest(VMID="../x")))
    r["info_empty_id"] = code(lambda: call("GetVMInfo", fc.GetVMInfoRequest(VMID="")))
    r["no_namespace"] = code(
        lambda: stub.GetVMInfo(fc.GetVMInfoRequest(VMID="nosuchvm"), timeout=30)
    )
    r["describe_unknown"] = code(
        lambda: vms.Describe(ev.DescribeVMRequest(vm_id="nosuchvm"), metadata=md, timeout=30)
    )
    r["list_empty"] = outcome(
        lambda: [v.vm_id for v in vms.List(ev.ListVMsRequest(), metadata=md, timeout=30).vms]
    )
    if mode == "errors":
        print(json.dumps(r))
        return

    machine = types.FirecrackerMachineConfiguration(VcpuCount=1, MemSizeMib=256)
    balloon = types.FirecrackerBalloonDevice(AmountMib=64, DeflateOnOom=True, StatsPollingIntervals=1)
    r["create"] = outcome(
        lambda: call(
            "CreateVM",
            fc.CreateVMRequest(VMID=vmid, MachineCfg=machine, BalloonDevice=balloon, ContainerCount=0),
        ).VMID
    )
    r["create_again"] = code(lambda: call("CreateVM", fc.CreateVMRequest(VMID=vmid)))
    r["info"] = outcome(lambda: call("GetVMInfo", fc.GetVMInfoRequest(VMID=vmid)).VMID)

    def describe():
        d = vms.Describe(ev.DescribeVMRequest(vm_id=vmid), metadata=md, timeout=30)
        return {"state": d.state, "vcpus": d.vcpus, "memory_mib": d.memory_mib,
                "explicit": d.explicit, "namespace": d.namespace}

    r["describe"] = outcome(describe)
    r["list"] = outcome(
        lambda: [v.vm_id for v in vms.List(ev.ListVMsRequest(), metadata=md, timeout=30).vms]
    )
    r["pause"] = code(lambda: call("PauseVM", fc.PauseVMRequest(VMID=vmid)))
    r["paused_state"] = outcome(lambda: describe()["state"])
    r["resume"] = code(lambda: call("ResumeVM", fc.ResumeVMRequest(VMID=vmid)))
    r["resumed_state"] = outcome(lambda: describe()["state"])

    def metadata():
        m = call("GetVMMetadata", fc.GetVMMetadataRequest(VMID=vmid)).Metadata
        return json.loads(m) if m else None

    r["set_metadata"] = code(
        lambda: call("SetVMMetadata", fc.SetVMMetadataRequest(VMID=vmid, Metadata='{"a": 1, "b": {"c": 2}}'))
    )
    r["metadata_set"] = outcome(metadata)
    r["update_metadata"] = code(
        lambda: call(
            "UpdateVMMetadata",
            fc.UpdateVMMetadataRequest(VMID=vmid, Metadata='{"b": {"c": null, "d": 3}, "e": "x"}'),
        )
    )
    r["metadata_updated"] = outcome(metadata)
    r["set_bad_json"] = code(
        lambda: call("SetVMMetadata", fc.SetVMMetadataRequest(VMID=vmid, Metadata="not json"))
    )
    r["update_bad_json"] = code(
        lambda: call("UpdateVMMetadata", fc.UpdateVMMetadataRequest(VMID=vmid, Metadata="{"))
    )
    r["metadata_kept"] = outcome(metadata)

    def balloon_config():
        b = call("GetBalloonConfig", fc.GetBalloonConfigRequest(VMID=vmid)).BalloonConfig
        return {"amount": b.AmountMib, "deflate": b.DeflateOnOom, "interval": b.StatsPollingIntervals}

    r["balloon_config"] = outcome(balloon_config)
    r["update_balloon"] = code(lambda: call("UpdateBalloon", fc.UpdateBalloonRequest(VMID=vmid, AmountMib=32)))
    r["balloon_updated"] = outcome(balloon_config)

    def stats():
        s = call("GetBalloonStats", fc.GetBalloonStatsRequest(VMID=vmid))
        return {"target_mib": s.TargetMib, "actual_mib": s.ActualMib, "total_memory": s.TotalMemory}

    r["balloon_stats"] = outcome(stats)
    r["update_balloon_stats"] = code(
        lambda: call("UpdateBalloonStats", fc.UpdateBalloonStatsRequest(VMID=vmid, StatsPollingIntervals=2))
    )
    r["balloon_interval"] = outcome(lambda: balloon_config()["interval"])
    r["stop"] = code(lambda: call("StopVM", fc.StopVMRequest(VMID=vmid, TimeoutSeconds=30)))
    r["info_after_stop"] = code(lambda: call("GetVMInfo", fc.GetVMInfoRequest(VMID=vmid)))
    r["stop_again"] = code(lambda: call("StopVM", fc.StopVMRequest(VMID=vmid)))

    # An empty VMID: emberd names the VM.
    made = outcome(lambda: call("CreateVM", fc.CreateVMRequest(MachineCfg=machine)).VMID)
    r["generated_id_len"] = {"ok": len(made["ok"])} if "ok" in made else made
    if "ok" in made:
        r["stop_generated"] = code(lambda: call("StopVM", fc.StopVMRequest(VMID=made["ok"])))
    # A static interface on a tap that does not exist is refused, leaving no VM.
    nic = types.FirecrackerNetworkInterface(
        StaticConfig=types.StaticNetworkConfiguration(MacAddress="02:00:00:00:00:01", HostDevName="embernotap0")
    )
    r["create_with_nic"] = code(
        lambda: call("CreateVM", fc.CreateVMRequest(VMID=vmid + "-nic", NetworkInterfaces=[nic]))
    )
    r["info_after_nic"] = code(lambda: call("GetVMInfo", fc.GetVMInfoRequest(VMID=vmid + "-nic")))
    r["list_after"] = outcome(
        lambda: [v.vm_id for v in vms.List(ev.ListVMsRequest(), metadata=md, timeout=30).vms]
    )
    print(json.dumps(r))


if __name__ == "__main__":
    main()
