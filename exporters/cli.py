"""`tapeserve export CHECKPOINT --repository DIR --name NAME`: checkpoint -> verified ONNX."""

from __future__ import annotations

from pathlib import Path

import click

from exporters.export import DEFAULT_OPSET, export_to_repository, load_checkpoint
from exporters.trace import ExportError
from exporters.verify import DEFAULT_RTOL


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        dims = tuple(int(d) for d in value.replace("x", ",").split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise click.BadParameter(f"{value!r}: expected positive dimensions like 1,8,8")
    return dims


@click.command("export")
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--repository",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Model repository folder (created if missing).",
)
@click.option("--name", required=True, help="Model name: the folder under the repository.")
@click.option(
    "--version",
    type=click.IntRange(min=1),
    help="Version number [default: the next free one].",
)
@click.option("--overwrite", is_flag=True, help="Replace the model file of an existing --version.")
@click.option(
    "--opset",
    default=DEFAULT_OPSET,
    show_default=True,
    type=click.IntRange(min=13),
    help="ONNX opset (13 and newer, as far as the model's ops and onnxruntime allow).",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    help="int8 quantization: static (calibrated on --dataset) for models with convolutions "
    "when a dataset is known, dynamic otherwise.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(min=0),
    help="max_batch_size written to config.json [default: keep the current one, else 64].",
)
@click.option(
    "--example-shape",
    callback=_shape,
    help="Shape of ONE input sample, without the batch dimension, e.g. 1,8,8 "
    "[default: the checkpoint's input shape].",
)
@click.option(
    "--example-batch",
    default=3,
    show_default=True,
    type=click.IntRange(min=2),
    help="Batch size of the traced example (verification uses other sizes).",
)
@click.option(
    "--dataset",
    help="Bundled dataset (digits) whose held-out samples verify the model and calibrate "
    "static quantization [default: the one the checkpoint names].",
)
@click.option(
    "--rtol",
    default=DEFAULT_RTOL,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Largest max-relative error accepted for a float model.",
)
@click.option(
    "--max-accuracy-drop",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Largest accuracy drop in points accepted for a quantized model.",
)
def export(checkpoint: Path, **options: object) -> None:
    """Export an engine CHECKPOINT to ONNX, verify it in onnxruntime, and publish it as
    REPOSITORY/NAME/<version>/model.onnx (atomically; nothing is written if it fails)."""
    try:
        ckpt = load_checkpoint(checkpoint)
        result = export_to_repository(
            ckpt, options.pop("repository"), options.pop("name"), **options
        )
    except (ExportError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    rewrites = ", ".join(f"{k} {v}" for k, v in result.rewrites.items() if v) or "none"
    click.echo(f"rewrites: {rewrites}")
    click.echo(f"model: {result.summary}")
    if result.quantization:
        click.echo(f"quantization: {result.quantization}")
    for report in result.reports:
        click.echo(report.table())
    if not result.ok:
        raise click.ClickException("verification failed: the model was not written")
    click.echo(f"wrote {result.path} (version {result.version})")


if __name__ == "__main__":
    export()
