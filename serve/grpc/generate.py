"""Write serve/grpc/generated/ from the .proto files in serve/grpc/proto/ (grpcio-tools).

    .venv/bin/python -m serve.grpc.generate [--out DIR]

protoc writes `import model_config_pb2` for a file's imports; here the generated modules live in a
package, so those imports are rewritten to `from serve.grpc.generated import ...`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("grpc_service.proto", "model_config.proto")
PACKAGE = "serve.grpc.generated"
#: What each generated module is; model_config.proto defines no service, so it has no _grpc.
MODULES = ("grpc_service_pb2.py", "grpc_service_pb2_grpc.py", "model_config_pb2.py")


def generate(out: Path) -> list[Path]:
    """Generate the modules into `out`; returns their paths."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as scratch:
        args = ["grpc_tools.protoc", f"-I{HERE / 'proto'}", f"--python_out={scratch}",
                f"--grpc_python_out={scratch}", *PROTOS]  # fmt: skip
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        written = []
        for name in MODULES:
            text = (Path(scratch) / name).read_text()
            text = re.sub(
                r"^import (\w+_pb2) as (\w+)$", rf"from {PACKAGE} import \1 as \2", text, flags=re.M
            )
            target = out / name
            target.write_text(text)
            written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "generated")
    args = parser.parse_args()
    for path in generate(args.out):
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
