"""The `tapeserve bench` subcommand (load generation itself lives in loadgen/http.py and, for
`--protocol grpc`, loadgen/grpc.py)."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import click
from tqdm import tqdm

from loadgen import grpc as grpc_bench
from loadgen import http as bench


@click.command("bench")
@click.argument("model")
@click.option(
    "--protocol",
    type=click.Choice(["http", "grpc"]),
    default="http",
    show_default=True,
    help="V2 over HTTP (JSON or binary bodies) or the V2 gRPC service (raw tensors).",
)
@click.option(
    "--url",
    default=None,
    help="Base URL of the V2 server [default: http://127.0.0.1:8000, with --protocol grpc "
    "127.0.0.1:8001].",
)
@click.option("--model-version", default="", help="Model version [default: the server's choice].")
@click.option(
    "--concurrency",
    "-c",
    default="1,8,64",
    show_default=True,
    help="Comma-separated concurrent connections to sweep.",
)
@click.option(
    "--duration",
    "-d",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Measured seconds per concurrency level (at least until one request is answered).",
)
@click.option(
    "--warmup",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Unmeasured seconds before each level.",
)
@click.option(
    "--binary/--json",
    "binary_data",
    default=False,
    show_default=True,
    help="Send tensors with the binary tensor extension, or as JSON.",
)
@click.option(
    "--batch-size",
    "-b",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Rows per request (the metadata's -1 batch dimension).",
)
@click.option(
    "--input-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Sample input: .npy (single input), .npz (one array per input) or a V2 JSON body.",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Per-request timeout in seconds.",
)
@click.option(
    "--json-out",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write settings and results as JSON here.",
)
@click.option(
    "--plot",
    "plot_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG of throughput and latency against concurrency (needs matplotlib).",
)
@click.option(
    "--save-body",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the request body (e.g. for wrk).",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show a progress bar on stderr.",
)
def bench_command(
    model: str,
    protocol: str,
    url: str | None,
    model_version: str,
    concurrency: str,
    duration: float,
    warmup: float,
    binary_data: bool,
    batch_size: int,
    input_file: Path | None,
    timeout: float,
    json_out: Path | None,
    plot_out: Path | None,
    save_body: Path | None,
    progress: bool,
) -> None:
    """Measure throughput and latency of MODEL on a running V2 server over a concurrency sweep."""
    try:
        levels = [int(part) for part in concurrency.split(",") if part.strip()]
        if not levels or min(levels) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(
            f"expected positive integers separated by commas, got {concurrency!r}",
            param_hint="--concurrency",
        ) from None
    if plot_out is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise click.UsageError(
                "--plot needs matplotlib: pip install 'tapeserve[bench]'"
            ) from None
    grpc_mode = protocol == "grpc"
    url = url or ("127.0.0.1:8001" if grpc_mode else "http://127.0.0.1:8000")
    try:
        if grpc_mode:
            addr = grpc_bench.address(url)
            metadata = grpc_bench.model_metadata(addr, model, model_version, timeout)
        else:
            target = bench.Target.parse(url)
            path = bench.model_path(model, model_version)
            metadata = bench.request_json(target, "GET", path, timeout)
        if input_file is not None:
            inputs = bench.inputs_from_file(input_file)
            if "" in inputs:
                names = [spec["name"] for spec in metadata.get("inputs", [])]
                if len(names) != 1:
                    raise ValueError(f"a .npy sample fits a model with one input; it has {names}")
                inputs = {names[0]: inputs.pop("")}
        else:
            inputs = bench.inputs_from_metadata(metadata, batch_size)
        if grpc_mode:
            body = grpc_bench.encode_request(model, model_version, inputs)
            grpc_bench.check_answer(grpc_bench.one_request(addr, body, timeout), metadata)
        else:
            body, headers = bench.encode_request(inputs, binary_data)
            infer_path = target.base_path + path + "/infer"
            bench.check_answer(
                *bench.one_request(target, infer_path, body, headers, timeout), metadata
            )
    except (RuntimeError, ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    if save_body is not None:
        save_body.write_bytes(body)
    shapes = ", ".join(f"{n} {list(a.shape)}" for n, a in inputs.items())
    encoding = "gRPC raw" if grpc_mode else ("binary" if binary_data else "JSON")
    click.echo(
        f"{model} at {url}: {encoding} body of {len(body)} bytes ({shapes}); answer checked",
        err=True,
    )
    results = []
    for level in levels:
        bar = tqdm(
            total=round(duration, 1),
            desc=f"c={level}",
            unit="s",
            disable=not progress,
            leave=False,
            file=sys.stderr,
            bar_format="{desc} {bar} {n:.1f}/{total}s{postfix}",
        )

        def tick(elapsed: float, done: int, bar: tqdm = bar) -> None:
            bar.n = round(elapsed, 1)
            bar.set_postfix_str(f"{done / max(elapsed, 1e-9):.0f} req/s")

        try:
            # The first answer of each level is checked before the measured window.
            if grpc_mode:
                grpc_bench.check_answer(grpc_bench.one_request(addr, body, timeout), metadata)
                result = grpc_bench.run_level(addr, body, level, duration, warmup, timeout, tick)
            else:
                bench.check_answer(
                    *bench.one_request(target, infer_path, body, headers, timeout), metadata
                )
                result = bench.run_level(
                    target, infer_path, body, headers, level, duration, warmup, timeout, tick
                )
        except (RuntimeError, OSError) as exc:
            raise click.ClickException(f"concurrency {level}: {exc}") from None
        finally:
            bar.close()
        results.append(result)
        p50, p99 = (
            result.latency_ms.get("p50", float("nan")),
            result.latency_ms.get("p99", float("nan")),
        )
        click.echo(
            f"c={level:<4d} {result.throughput:10.1f} req/s  p50 {p50:8.2f} ms  p99 {p99:8.2f} ms"
            f"  errors {result.errors}"
            + (f" (first: {result.first_error})" if result.errors else ""),
            err=True,
        )
    click.echo(bench.format_table(results))
    settings = {
        "url": url,
        "model": model,
        "model_version": model_version,
        "protocol": "grpc" if grpc_mode else ("binary" if binary_data else "json"),
        "body_bytes": len(body),
        "inputs": {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in inputs.items()},
        "duration_s": duration,
        "warmup_s": warmup,
        "client": "tapeserve bench (closed loop)",
        "python": platform.python_version(),
    }
    if json_out is not None:
        json_out.write_text(json.dumps(bench.results_document(settings, results), indent=1))
    if plot_out is not None:
        bench.plot(results, plot_out, f"{model} ({settings['protocol']}, {url})")
    if any(r.errors for r in results):
        sys.exit(1)
