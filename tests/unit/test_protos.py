"""The committed stubs under protos/switchyard/v1 are exactly what protos/generate.py makes."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location(
        "generate_protos", ROOT / "protos" / "generate.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_stubs_match_generated(tmp_path):
    written = _generator().generate(tmp_path)
    assert written, "generator produced nothing"
    committed_dir = ROOT / "protos" / "switchyard" / "v1"
    stale = []
    for fresh in written:
        committed = committed_dir / fresh.name
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(fresh.name)
    extra = {p.name for p in committed_dir.glob("*_pb2*.py*")} - {p.name for p in written}
    assert not stale and not extra, (
        f"stubs out of date: {stale or sorted(extra)}; run `python protos/generate.py`"
    )


def test_stubs_install_as_switchyard_v1():
    from switchyard.v1 import engine_pb2_grpc, inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.package == "switchyard.v1"
    assert hasattr(inference_pb2_grpc, "InferenceStub")
    assert hasattr(engine_pb2_grpc, "EngineControlStub")
