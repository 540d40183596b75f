"""``tunefleet data fetch`` and ``tunefleet data check``: the image data sets, on local disk."""

from __future__ import annotations

import click

from tunefleet.objectives._datasets import (
    DATASETS,
    check_dataset,
    data_root,
    fetch_dataset,
)

__all__ = ["data"]

_DIR_HELP = (
    "Data dir; each data set goes in DIR/<dataset>/ "
    "[$TUNEFLEET_DATA_DIR, else ~/.cache/tunefleet/data]."
)


@click.group()
def data() -> None:
    """The data sets the built-in objectives read: fetch them once, check they are there.

    Trials never download. Fetch into an image or a volume that workers mount, and point
    $TUNEFLEET_DATA_DIR at it. Example:

    \b
        tunefleet data fetch fashion-mnist --dir /data
        TUNEFLEET_DATA_DIR=/data tunefleet data check
    """


@data.command()
@click.argument("dataset", type=click.Choice(sorted(DATASETS)))
@click.option("--dir", "directory", type=click.Path(file_okay=False), help=_DIR_HELP)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="URL",
    help="Base URL to fetch from instead of the public mirrors (repeatable; file:// works).",
)
def fetch(dataset: str, directory: str | None, mirrors: tuple[str, ...]) -> int:
    """Download a data set's IDX files and verify their checksums.

    Files already present with the right checksum are kept; a failed download leaves nothing
    behind. Example:

        tunefleet data fetch mnist --dir /data
    """
    root = data_root(directory)
    target = fetch_dataset(
        dataset, root, mirrors=mirrors or None, progress=lambda line: click.echo(f"  {line}")
    )
    click.echo(f"{dataset}: ready in {target}")
    if directory:
        click.echo(f"workers read it with TUNEFLEET_DATA_DIR={root}")
    return 0


@data.command()
@click.argument("datasets", nargs=-1, type=click.Choice(sorted(DATASETS)))
@click.option("--dir", "directory", type=click.Path(file_okay=False), help=_DIR_HELP)
def check(datasets: tuple[str, ...], directory: str | None) -> int:
    """Say which data sets are present and readable; exit 1 if one is missing.

    Example:

        tunefleet data check fashion-mnist --dir /data
    """
    root = data_root(directory)
    missing = 0
    for name in datasets or tuple(sorted(DATASETS)):
        status = check_dataset(name, root)
        if status.present:
            click.echo(f"{name}: ok, {status.detail} in {status.directory}")
        else:
            missing += 1
            click.echo(status.detail)
    return 1 if missing else 0
