"""Regenerate the committed gRPC stubs from proto/ (run: python tools/gen_protos.py [--check]).

--check regenerates into a temporary folder and exits 1 when the committed stubs differ, so CI
catches a .proto change whose stubs were not regenerated.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = ROOT / "platform"
GENERATED = OUT_PACKAGE / "aftershock" / "v1"


def generate(out_dir: Path) -> None:
    # The mypy-protobuf plugins are scripts beside this interpreter; protoc finds plugins on PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "aftershock" / "v1").glob("*.proto")
    )
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    check = "--check" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = out / "aftershock" / "v1"
        names = sorted(p.name for p in fresh.iterdir() if p.is_file())
        if check:
            committed = sorted(
                p.name for p in GENERATED.iterdir() if p.suffix in {".py", ".pyi"} and p.name != "__init__.py"
            )
            _, mismatch, errors = filecmp.cmpfiles(fresh, GENERATED, names, shallow=False)
            stale = sorted(set(mismatch) | set(errors) | (set(committed) - set(names)))
            if stale:
                print("generated stubs are stale; run: python tools/gen_protos.py", *stale, sep="\n  ")
                return 1
            return 0
        GENERATED.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(fresh / name, GENERATED / name)
        (GENERATED / "__init__.py").write_text(
            '"""Generated from proto/aftershock/v1 by tools/gen_protos.py; do not edit."""\n'
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
