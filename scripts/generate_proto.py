"""Generate the Python stubs for proto/ndop/v1 into core/ndop_core/proto/.

protoc writes absolute imports (`from ndop.v1 import ndop_pb2`); the stubs live inside the
ndop_core package, so the one import line is made relative. Nothing else is touched.
Usage: python scripts/generate_proto.py [OUTPUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = PROTO_ROOT / "ndop" / "v1" / "ndop.proto"
DEFAULT_OUT = ROOT / "core" / "ndop_core" / "proto"
GENERATED = ("ndop_pb2.py", "ndop_pb2.pyi", "ndop_pb2_grpc.py")


def generate(out_dir: Path) -> None:
    well_known = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(
            [
                "protoc",
                f"-I{PROTO_ROOT}",
                f"-I{well_known}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_FILE),
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = (Path(tmp) / "ndop" / "v1" / name).read_text()
            text = text.replace("from ndop.v1 import ndop_pb2", "from . import ndop_pb2")
            (out_dir / name).write_text(text)


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
