"""Regenerate the Python stubs for protos/switchyard/v1/*.proto.

    python protos/generate.py            # write the stubs beside the .proto files
    python protos/generate.py --out DIR  # write them under DIR (the up-to-date test does)

Stubs (`*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py`) are committed and install as the
`switchyard.v1` package. grpcio-tools is pinned in pyproject.toml so that the output is
reproducible; tests/unit/test_protos.py fails when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "switchyard" / "v1").glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Generate stubs for every proto under PROTO_ROOT into `out`; returns the files written."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out.mkdir(parents=True, exist_ok=True)
    rels = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *rels,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted((out / "switchyard" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=PROTO_ROOT, help="output root (default: protos/)"
    )
    written = generate(parser.parse_args().out)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
