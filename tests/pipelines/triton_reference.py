"""Run the probes of tests/pipelines/probes.py against a real Triton and print its answers.

    pip install nvidia-pytriton requests   # in a scratch venv: Triton 2.51 with its Python backend
    python tests/pipelines/triton_reference.py [--tapeserve URL] [--json-out FILE]

Triton is started from the tritonserver that nvidia-pytriton bundles, in explicit model-control
mode; every model of tests/pipelines/models is loaded through the load API with its config.json
as the `config` parameter - the same JSON tapeserve reads, which Triton accepts as it is. With
--tapeserve URL (a tapeserve serving a copy of the same folder with --allow-python-models) both
answer side by side. The answers Triton gave when this was last run are in
tests/pipelines/triton_answers.json; the tests assert tapeserve's side of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.pipelines.probes import probe_crash, probe_hang, probe_requests  # noqa: E402

MODELS = Path(__file__).parent / "models"
#: Load order: an ensemble only after its steps.
ORDER = [
    "add_sub",
    "double",
    "raiser",
    "crasher",
    "hanger",
    "wrong_count",
    "bls",
    "scores",
    "scores_unbatched",
    "import_error",
    "init_error",
    "ens_two",
    "ens_three",
    "ens_fail",
    "ens_unknown",
    "ens_unmapped",
    "ens_mistyped",
    "ens_cycle",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_ENUMS = ("data_type", "kind")


def to_pbtxt(value: dict, indent: str = "") -> str:
    """A config.json as Triton's config.pbtxt: the same fields, line for line."""
    lines = []
    for key, item in value.items():
        if key in ("input_map", "output_map"):
            for k, v in item.items():
                lines.append(f'{indent}{key} {{ key: "{k}" value: "{v}" }}')
        elif isinstance(item, dict):
            lines.append(f"{indent}{key} {{\n{to_pbtxt(item, indent + '  ')}{indent}}}")
        elif isinstance(item, list) and item and isinstance(item[0], dict):
            blocks = [f"{indent}  {{\n{to_pbtxt(i, indent + '    ')}{indent}  }}" for i in item]
            lines.append(f"{indent}{key} [\n" + ",\n".join(blocks) + f"\n{indent}]")
        elif isinstance(item, list):
            lines.append(f"{indent}{key}: [ {', '.join(map(str, item))} ]")
        elif isinstance(item, str) and key not in _ENUMS:
            lines.append(f'{indent}{key}: "{item}"')
        else:
            lines.append(f"{indent}{key}: {item}")
    return "".join(line + "\n" for line in lines)


def start_triton(workdir: Path) -> tuple[subprocess.Popen, str]:
    import pytriton

    package = Path(pytriton.__file__).parent
    dist = workdir / "tritonserver"
    shutil.copytree(
        package / "tritonserver", dist, ignore=shutil.ignore_patterns("python_backend_stubs")
    )
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy(
        package / "tritonserver/python_backend_stubs" / version / "triton_python_backend_stub",
        dist / "backends/python/triton_python_backend_stub",
    )
    repo = workdir / "models"
    shutil.copytree(MODELS, repo, ignore=shutil.ignore_patterns("config.json", "__pycache__"))
    for labels in MODELS.glob("*/labels.txt"):
        shutil.copy(labels, repo / labels.parent.name / labels.name)
    for config in MODELS.glob("*/config.json"):  # Triton reads config.pbtxt from disk
        text = to_pbtxt(json.loads(config.read_text()))
        (repo / config.parent.name / "config.pbtxt").write_text(text)
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = str(package.parent / "nvidia_pytriton.libs")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the stub's python has numpy
    process = subprocess.Popen(
        [
            str(dist / "bin/tritonserver"),
            "--model-repository",
            str(repo),
            "--backend-directory",
            str(dist / "backends"),
            "--model-control-mode",
            "explicit",
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--metrics-port",
            str(metrics),
            "--strict-readiness",
            "false",
        ],
        stdout=(workdir / "triton.log").open("wb"),  # noqa: SIM115 (the server keeps it)
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{http}"
    for _ in range(300):
        try:
            if requests.get(url + "/v2/health/live", timeout=1).status_code == 200:
                return process, url
        except requests.RequestException:
            time.sleep(0.1)
    raise RuntimeError((workdir / "triton.log").read_text()[-3000:])


def load_all(url: str) -> dict:
    """Load each model with its config.json; returns {model: load answer}."""
    answers = {}
    for name in ORDER:
        config = (MODELS / name / "config.json").read_text()
        r = requests.post(
            f"{url}/v2/repository/models/{name}/load",
            json={"parameters": {"config": config}},
            timeout=120,
        )
        answers[name] = {"status": r.status_code, "body": r.json() if r.text else ""}
    return answers


def observe(url: str, loads: dict | None = None) -> dict:
    got = {"load": loads} if loads is not None else {}
    got["index"] = requests.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
    got["ens_two config"] = requests.get(f"{url}/v2/models/ens_two/config", timeout=10).json()
    got.update(probe_requests(url))
    got.update(probe_crash(url))
    got.update(probe_hang(url))
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tapeserve", help="URL of a tapeserve serving the same models")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="triton-ref-") as tmp:
        process, url = start_triton(Path(tmp))
        try:
            triton = observe(url, load_all(url))
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:  # a request still hangs in the hanger model
                process.kill()
                process.wait()
    result = {"triton": triton}
    if args.tapeserve:
        result["tapeserve"] = observe(args.tapeserve)
        for key, value in triton.items():
            mark = "same" if result["tapeserve"].get(key) == value else "DIFFERS"
            print(f"{mark:8} {key}")
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
