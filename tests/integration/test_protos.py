"""The generated package matches proto/, and the OIP contract is wire-compatible with tritonclient."""

import json
import subprocess
import sys

from recpilot import codegen


def _generate() -> dict[str, str]:
    # protoc runs in its own interpreter: in-process, after torch/TensorFlow were loaded by other
    # tests, grpc_tools' protoc can crash the test process.
    code = "import json; from recpilot import codegen; print(json.dumps(codegen.generate()))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def test_generated_modules_are_up_to_date():
    res = subprocess.run([sys.executable, "-m", "recpilot.codegen", "--check"], capture_output=True, text=True)
    assert res.returncode == 0, "run `python -m recpilot.codegen` and commit recpilot/pb:\n" + res.stderr
    files = _generate()
    assert codegen.check(files) == []
    assert {"events_pb2.pyi", "recommend_pb2_grpc.py", "open_inference_grpc_pb2_grpc.py"} <= set(files)


def test_check_detects_a_stale_file(tmp_path, monkeypatch):
    files = _generate()
    fake = tmp_path / "pb"
    fake.mkdir()
    for name, text in files.items():
        (fake / name).write_text(text)
    monkeypatch.setattr(codegen, "PB_DIR", fake)
    assert codegen.check(files) == []
    (fake / "events_pb2.py").write_text(files["events_pb2.py"] + "\n# edited by hand\n")
    (fake / "old_pb2.py").write_text("")
    assert set(codegen.check(files)) == {"events_pb2.py", "old_pb2.py (stale: no proto generates it)"}


_DUMP = r"""
import json, sys, importlib
mod = importlib.import_module(sys.argv[1])
fd = mod.DESCRIPTOR
def msg(d):
    return {f.name: [f.number, f.type, bool(f.is_repeated if hasattr(f, "is_repeated") else f.label == 3),
                     f.message_type.full_name if f.message_type else ""] for f in d.fields}
def walk(d, out):
    out[d.full_name] = msg(d)
    for n in d.nested_types:
        walk(n, out)
    return out
messages = {}
for m in fd.message_types_by_name.values():
    walk(m, messages)
out = {"package": fd.package,
       "messages": messages,
       "services": {s.full_name: {m.name: [m.input_type.full_name, m.output_type.full_name]
                                  for m in s.methods} for s in fd.services_by_name.values()}}
print(json.dumps(out))
"""


def _dump(module: str) -> dict:
    # Each in its own interpreter: both modules register `inference.*` in the default descriptor pool.
    res = subprocess.run([sys.executable, "-c", _DUMP, module], capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def test_open_inference_protocol_matches_tritonclient():
    ours = _dump("recpilot.pb.open_inference_grpc_pb2")
    triton = _dump("tritonclient.grpc.service_pb2")
    assert ours["package"] == triton["package"] == "inference"
    # Triton's service is a superset (repository, statistics, ...): every OIP message and RPC must match it.
    assert len(ours["messages"]) >= 20  # nested tensor/parameter messages included
    for name, fields in ours["messages"].items():
        assert name in triton["messages"], name
        for field, desc in fields.items():
            assert triton["messages"][name].get(field) == desc, f"{name}.{field}"
    ours_rpcs = ours["services"]["inference.GRPCInferenceService"]
    triton_rpcs = triton["services"]["inference.GRPCInferenceService"]
    assert set(ours_rpcs) == {"ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}
    for rpc, types in ours_rpcs.items():
        assert triton_rpcs[rpc] == types, rpc
