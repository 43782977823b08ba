"""`tapeserve train RECIPE`: train a ready recipe, report test accuracy, save a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from engine.recipes import RECIPES


@click.command()
@click.argument("recipe", type=click.Choice(sorted(RECIPES)))
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs [default: the recipe's].")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Checkpoint folder [default: runs/RECIPE].",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for init and shuffling.")
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append per-epoch metrics as JSON lines [default: OUT/metrics.jsonl].",
)
@click.option(
    "--tensorboard",
    "tensorboard_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write TensorBoard event files here (needs tensorboardX).",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Show progress bars."
)
def train(
    recipe: str,
    epochs: int | None,
    out: Path | None,
    seed: int,
    log_path: Path | None,
    tensorboard_dir: Path | None,
    progress: bool,
) -> None:
    """Train RECIPE on the bundled 8x8 digits and save a checkpoint for `tapeserve export`."""
    from engine import recipes

    out = out or Path("runs") / recipe
    log_path = log_path or out / "metrics.jsonl"
    result = recipes.run(
        recipe,
        epochs=epochs,
        out=out,
        seed=seed,
        progress=progress,
        log_path=log_path,
        tensorboard_dir=tensorboard_dir,
    )
    click.echo(
        f"{recipe}: test accuracy {result.test_accuracy:.4f} (loss {result.test_loss:.4f}) "
        f"after {len(result.history)} epochs; checkpoint {result.checkpoint}"
    )
