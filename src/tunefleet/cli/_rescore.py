"""``tunefleet rescore``: is the best trial real, or a lucky seed/split?"""

from __future__ import annotations

import json
import logging

import click
from rich.console import Console

from tunefleet._logging import setup_logging
from tunefleet.config import parse_objective_args
from tunefleet.rescore import RescoreResult, score_stored_model
from tunefleet.rescore import rescore as rescore_study
from tunefleet.storage import open_storage, resolve_storage_url

__all__ = ["rescore"]


@click.command()
@click.argument("objective", required=False)
@click.option(
    "--study",
    "--study-name",
    "study",
    metavar="NAME",
    required=True,
    help="The study whose best trial to re-evaluate.",
)
@click.option(
    "--storage",
    metavar="URL",
    help="As for 'run' (default: $TUNEFLEET_STORAGE, $DATABASE_URL, else ./tunefleet.db).",
)
@click.option("--repeats", type=int, default=10, help="Re-evaluations, each a new seed [10].")
@click.option("--seed", type=int, default=0, help="Picks the repeats' seeds (1..K for 0) [0].")
@click.option(
    "--objective-arg",
    "objective_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recorded setting, or give a user objective's settings (repeatable).",
)
@click.option(
    "--stored-model",
    is_flag=True,
    help="Score the best trial's stored model (--artifacts) on its validation data instead of "
    "re-training: does the saved model give the recorded value?",
)
@click.option(
    "--artifacts",
    metavar="URL",
    help="With --stored-model: the artifact store as this machine sees it [the study's].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def rescore(
    objective: str | None,
    study: str,
    storage: str | None,
    repeats: int,
    seed: int,
    objective_args: tuple[str, ...],
    as_json: bool,
    stored_model: bool,
    artifacts: str | None,
) -> int:
    """Re-evaluate the best trial's parameters with other seeds and splits: mean ± sd.

    A search keeps the luckiest of many noisy scores; this shows how much of the best was luck.
    Built-ins record their objective on each trial; a user objective is named, and opts in by
    accepting a 'seed' argument. Examples:

        tunefleet rescore --study xgb --repeats 20

        tunefleet rescore train.py:objective --study mine --objective-arg epochs=3

        tunefleet rescore --study xgb --stored-model
    """
    setup_logging(logging.WARNING)
    fleet_storage = open_storage(resolve_storage_url(storage))
    if stored_model:
        scored = score_stored_model(fleet_storage, study, artifacts)
        if as_json:
            click.echo(json.dumps(scored.to_json()))
        else:
            same = "the same" if scored.score == scored.reported else "NOT the same"
            click.echo(
                f"study {scored.study}: best trial #{scored.trial_number}'s stored model "
                f"({', '.join(scored.files)}) scores {scored.score:.4f}; recorded "
                f"{scored.reported:.4f} ({same} value)"
            )
        return 0
    err = Console(stderr=True)
    result = rescore_study(
        fleet_storage,
        study,
        objective=objective,
        objective_args=parse_objective_args(objective_args),
        repeats=repeats,
        seed=seed,
        progress=lambda line: err.print(f"[dim]{line}[/]", highlight=False),
    )
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(render(result))
    return 0


def render(result: RescoreResult) -> str:
    """The rescore as a few aligned lines of text."""
    params = ", ".join(f"{k}={v!r}" for k, v in result.params.items())
    lines = [
        f"study {result.study}: best trial #{result.trial_number} of {result.objective} "
        f"({result.direction})",
        f"  params      {params}",
        f"  reported    {result.reported:.4f}",
    ]
    if result.reproduced is not None:
        same = "the same" if result.reproduced == result.reported else "NOT the same"
        lines.append(f"  reproduced  {result.reproduced:.4f}  (its own seeds: {same} value)")
    lines.append(
        f"  rescored    {result.mean:.4f} ± {result.sd:.4f}  over {len(result.values)} other "
        f"seeds/splits (min {min(result.values):.4f}, max {max(result.values):.4f})"
    )
    gap = result.gap_in_sd
    if gap is None:
        verdict = "every repeat gave the same value: the best does not depend on the seed"
    elif gap > 1:
        verdict = (
            f"the reported best is {gap:.1f} sd better than its rescored mean: part of it was a "
            f"lucky seed or split; expect about {result.mean:.4f}"
        )
    else:
        verdict = "the reported best is within 1 sd of its rescored mean: it holds up"
    lines.append(f"  {verdict}")
    return "\n".join(lines)
