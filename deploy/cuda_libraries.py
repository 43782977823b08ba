#!/usr/bin/env python3
"""Prove that onnxruntime's CUDA provider has every library it needs, with or without a GPU.

The most common way a CUDA deployment fails is a missing or mismatched library (libcudnn.so.9,
libcublasLt.so.13) found only on the production host. This script checks, in the environment it
runs in (an image, a venv):

1. `onnxruntime.preload_dlls()` loads CUDA and cuDNN (from NVIDIA's pip wheels, or the system);
2. every library that the CUDA provider library links - and everything those link, and every
   library shipped in NVIDIA's wheels (cuDNN loads its engine libraries at run time) - resolves
   the way the dynamic loader resolves it: already loaded by the preload, or found through
   RUNPATH/RPATH, LD_LIBRARY_PATH, the ld.so cache or the default directories;
3. the same for the TensorRT provider library when TensorRT itself is shipped (libnvinfer);
4. the real loader agrees: dlopen of the provider library fails only on what is missing.

Only the driver's own libraries (libcuda.so.1 and friends), which the host or the NVIDIA
Container Toolkit provides, may be missing; with --require-driver (a GPU host) nothing may.

    python3 deploy/cuda_libraries.py [--require-driver] [--json]

Exit status 0 when complete, 1 when something is missing. Needs only the standard library and
onnxruntime-gpu (it runs inside the image without tapeserve's own code).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import io
import json
import os
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Libraries of the NVIDIA driver: never in an image, mounted from the host at run time.
DRIVER_LIBRARIES = frozenset({"libcuda.so.1", "libnvidia-ml.so.1", "libnvidia-ptxjitcompiler.so.1"})
PROVIDERS = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorRTExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}
TENSORRT_MARKER = "libnvinfer.so."
#: What preload_dlls() loads on Linux for onnxruntime-gpu built for CUDA 13, when onnxruntime does
#: not say itself. cuFFT and NVRTC are optional to onnxruntime (only some operators use them).
PRELOAD_CUDA13 = [
    "libcublasLt.so.13",
    "libcublas.so.13",
    "libnvrtc.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudart.so.13",
    "libcudnn.so.9",
]
OPTIONAL_PRELOAD = ("libcufft.", "libnvrtc.")

_DT_NEEDED, _DT_STRTAB, _DT_SONAME, _DT_RPATH, _DT_RUNPATH = 1, 5, 14, 15, 29
_PT_LOAD, _PT_DYNAMIC = 1, 2


@dataclass
class ElfInfo:
    """The dynamic-linking facts of one shared library."""

    soname: str | None
    needed: list[str]
    search: list[str]  # RUNPATH, else RPATH, with $ORIGIN expanded


def read_elf(path: str | Path) -> ElfInfo:
    """DT_SONAME, DT_NEEDED and RUNPATH/RPATH of a 64-bit little-endian ELF file.

    Read from the program headers (PT_DYNAMIC), as the loader does, so stripped section
    headers do not matter; no binutils needed.
    """
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 0x20)[0],
        *struct.unpack_from("<HH", data, 0x36),
    )
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return ElfInfo(None, [], [])

    def file_offset(vaddr: int) -> int:
        for start, offset, size in loads:
            if start <= vaddr < start + size:
                return vaddr - start + offset
        raise ValueError(f"{path}: address {vaddr:#x} is in no loaded segment")

    entries = []
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, pos)
        if tag == 0:
            break
        entries.append((tag, value))
    strtab = file_offset(next(v for t, v in entries if t == _DT_STRTAB))

    def string(offset: int) -> str:
        start = strtab + offset
        return data[start : data.index(b"\0", start)].decode()

    values = {
        tag: [string(v) for t, v in entries if t == tag]
        for tag in (_DT_NEEDED, _DT_SONAME, _DT_RPATH, _DT_RUNPATH)
    }
    origin = str(Path(path).resolve().parent)
    search_path = values[_DT_RUNPATH] or values[_DT_RPATH]
    search = [
        d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
        for entry in search_path
        for d in entry.split(":")
        if d
    ]
    soname = values[_DT_SONAME][0] if values[_DT_SONAME] else None
    return ElfInfo(soname, values[_DT_NEEDED], search)


def loaded_libraries() -> dict[str, str]:
    """soname (or file name) -> path of every shared library mapped into this process."""
    loaded = {}
    with open("/proc/self/maps") as maps:
        fields = [line.split(None, 5) for line in maps]
    paths = {f[5].strip() for f in fields if len(f) == 6 and f[5].startswith("/")}
    for path in paths:
        if ".so" not in os.path.basename(path) or not os.path.isfile(path):
            continue
        try:
            soname = read_elf(path).soname
        except (OSError, ValueError):
            continue
        loaded[soname or os.path.basename(path)] = path
        loaded.setdefault(os.path.basename(path), path)
    return loaded


def ld_cache() -> dict[str, str]:
    """soname -> path from the ld.so cache (`ldconfig -p`), x86-64 entries."""
    found: dict[str, str] = {}
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=False)
        except OSError:
            continue
        for line in out.stdout.splitlines()[1:]:
            name, _, rest = line.strip().partition(" (")
            if "=>" in rest and ("x86-64" in rest or "64bit" in rest or "aarch64" in rest):
                found.setdefault(name, rest.rsplit("=> ", 1)[1].strip())
        break
    return found


DEFAULT_DIRS = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
]


@dataclass
class Resolution:
    """Where each library of a closure came from, and which sonames nothing provides."""

    root: str
    resolved: dict[str, str] = field(default_factory=dict)  # soname -> path
    missing: dict[str, list[str]] = field(default_factory=dict)  # soname -> needed by


def resolve(root: str, loaded: dict[str, str], cache: dict[str, str]) -> Resolution:
    """The transitive NEEDED closure of `root`, resolved as the dynamic loader would."""
    env_dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    result = Resolution(root)
    queue = [root]
    seen = {root}
    while queue:
        path = queue.pop()
        info = read_elf(path)
        for soname in info.needed:
            if soname in result.resolved or soname in result.missing:
                result.missing.get(soname, []).append(os.path.basename(path))
                continue
            where = loaded.get(soname)
            if where is None:
                for folder in [*info.search, *env_dirs]:
                    candidate = os.path.join(folder, soname)
                    if os.path.isfile(candidate):
                        where = candidate
                        break
            where = where or cache.get(soname)
            if where is None:
                for folder in DEFAULT_DIRS:
                    candidate = os.path.join(folder, soname)
                    if os.path.isfile(candidate):
                        where = candidate
                        break
            if where is None:
                result.missing[soname] = [os.path.basename(path)]
                continue
            result.resolved[soname] = where
            real = os.path.realpath(where)
            if real not in seen:
                seen.add(real)
                queue.append(real)
    return result


def preload() -> tuple[list[str], str]:
    """Run onnxruntime.preload_dlls(); (its failure lines, everything it printed).

    preload_dlls() never raises: it prints "Failed to load ..." for each library it could not
    load, so its output is the verdict.
    """
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return ["onnxruntime has no preload_dlls() (onnxruntime-gpu 1.21 or later has)"], ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        ort.preload_dlls()
    text = out.getvalue()
    return [line for line in text.splitlines() if line.startswith("Failed to load")], text


def expected_preload() -> list[str]:
    """The libraries preload_dlls() must load: onnxruntime's own list, cuDNN included.

    preload_dlls() treats a missing cuDNN as optional and stays silent about it, but the CUDA
    provider cannot run convolutions without it, so here it is required.
    """
    import onnxruntime as ort

    paths = getattr(ort, "_get_nvidia_dll_paths", None)
    try:
        names = [p[-1] for p in paths(False, True, True)] if paths else PRELOAD_CUDA13
    except Exception:  # a private helper: its signature may change
        names = PRELOAD_CUDA13
    return [n for n in names if not n.startswith(OPTIONAL_PRELOAD)]


def nvidia_wheel_libraries() -> list[str]:
    """Every shared library shipped in NVIDIA's pip wheels (site-packages/nvidia/*/lib)."""
    found = []
    for folder in sys.path:
        found += glob.glob(os.path.join(folder, "nvidia", "*", "lib", "*.so*"))
    return sorted({os.path.realpath(p) for p in found if os.path.isfile(p)})


def dlopen_error(path: str) -> str | None:
    """What the real dynamic loader says when asked to load `path` (None: it loaded)."""
    try:
        ctypes.CDLL(path)
    except OSError as exc:
        return str(exc)
    return None


@dataclass
class Report:
    onnxruntime: str
    package: str
    cuda_version: str
    preload_failures: list[str]
    preloaded: list[str]
    #: library -> {"resolved": {soname: path}, "missing": {soname: [needed by]}}
    checked: dict[str, dict]
    tensorrt_shipped: bool
    dlopen: dict[str, str | None]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check(require_driver: bool = False) -> Report:
    """Run every check; `problems` lists what fails (empty: the libraries are complete)."""
    import onnxruntime as ort
    from onnxruntime.capi import build_and_package_info as build

    problems: list[str] = []
    capi = Path(ort.__file__).parent / "capi"
    allowed = set() if require_driver else set(DRIVER_LIBRARIES)

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        problems.append(
            f"this onnxruntime ({getattr(build, 'package_name', '?')}) has no CUDA provider: "
            "install onnxruntime-gpu"
        )
    failures, _ = preload()
    problems += [f"preload_dlls: {line}" for line in failures]
    loaded = loaded_libraries()
    for soname in expected_preload():
        if soname not in loaded and not any(soname in line for line in failures):
            problems.append(f"preload_dlls: {soname} was not loaded")
    preloaded = sorted(
        name for name, path in loaded.items() if "/nvidia/" in path and name.startswith("lib")
    )
    cache = ld_cache()

    roots = [str(capi / PROVIDERS["CUDAExecutionProvider"])]
    wheel_libs = nvidia_wheel_libraries()
    tensorrt = any(TENSORRT_MARKER in os.path.basename(p) for p in wheel_libs) or any(
        name.startswith(TENSORRT_MARKER) for name in cache
    )
    if tensorrt:
        roots.append(str(capi / PROVIDERS["TensorRTExecutionProvider"]))
    roots += wheel_libs

    checked: dict[str, dict] = {}
    for root in roots:
        if not os.path.isfile(root):
            problems.append(f"{root} does not exist")
            continue
        result = resolve(root, loaded, cache)
        missing = {k: v for k, v in result.missing.items() if k not in allowed}
        checked[root] = {"resolved": result.resolved, "missing": result.missing}
        for soname, needers in missing.items():
            problems.append(
                f"{os.path.basename(root)}: {soname} is not found (needed by "
                f"{', '.join(sorted(set(needers)))})"
            )

    dlopen = {}
    for name, library in PROVIDERS.items():
        path = capi / library
        if path.is_file() and (name == "CUDAExecutionProvider" or tensorrt):
            error = dlopen_error(str(path))
            dlopen[library] = error
            if error is not None and not any(lib in error for lib in allowed):
                problems.append(f"dlopen {library}: {error}")

    return Report(
        onnxruntime=ort.__version__,
        package=getattr(build, "package_name", "?"),
        cuda_version=getattr(build, "cuda_version", "?"),
        preload_failures=failures,
        preloaded=preloaded,
        checked=checked,
        tensorrt_shipped=tensorrt,
        dlopen=dlopen,
        problems=problems,
    )


def print_report(report: Report) -> None:
    print(f"{report.package} {report.onnxruntime}, built for CUDA {report.cuda_version}")
    print(
        f"preload_dlls: {'ok' if not report.preload_failures else 'FAILED'}; "
        f"loaded from NVIDIA wheels: {', '.join(report.preloaded) or 'none'}"
    )
    print(f"TensorRT: {'shipped, checked' if report.tensorrt_shipped else 'not shipped'}")
    print("| library | resolved | missing |")
    print("|---|---:|---|")
    for path, result in report.checked.items():
        missing = ", ".join(sorted(result["missing"])) or "-"
        print(f"| {os.path.basename(path)} | {len(result['resolved'])} | {missing} |")
    for library, error in report.dlopen.items():
        print(f"dlopen {library}: {'loads' if error is None else error}")
    for problem in report.problems:
        print(f"FAIL: {problem}")
    if report.ok:
        print("CUDA LIBRARIES COMPLETE")
    else:
        print(f"CUDA LIBRARIES INCOMPLETE: {len(report.problems)} problem(s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--require-driver",
        action="store_true",
        help="the NVIDIA driver's libraries must resolve too (on a GPU host)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = check(require_driver=args.require_driver)
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print_report(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
