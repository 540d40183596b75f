"""``tunefleet report``: one self-contained HTML file with a study's plots, readable offline.

The plots are Optuna's own (``optuna.visualization``: history, importances, parallel coordinates,
slices, intermediate values, Pareto front) plus a timeline of trials per worker. plotly.js is
embedded once, from the installed ``plotly`` package, so the file needs no network to open.

Trials are read once (see :mod:`tunefleet.monitor._load`) into an in-memory copy of the study,
so every plot sees the same snapshot while workers keep writing. Plots whose cost or ink grows
with every trial (parallel coordinates, intermediate values) draw a seeded random sample of a
large study, and say so.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import importlib.util
import logging
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunefleet.constants import FAIL_REASON_ATTR
from tunefleet.errors import ConfigError
from tunefleet.monitor._load import load_frozen_trials
from tunefleet.monitor._status import StudyStatus, read_status
from tunefleet.monitor._timeline import claim_times, fleet_busy_share, timeline_figure, trial_spans
from tunefleet.storage import FleetStorage
from tunefleet.storage.read import StudyRef

__all__ = ["Report", "build_report", "write_report"]

#: Parallel coordinates draw at most this many trials (a seeded random sample beyond).
PARALLEL_MAX = 2000
#: Intermediate-value curves drawn at most (a seeded random sample beyond).
INTERMEDIATE_MAX = 300
#: Failed trials listed with their reasons.
FAILURES_SHOWN = 20


@dataclass
class Section:
    key: str
    title: str
    body: str  # HTML: a figure's div, or a note


@dataclass
class Report:
    study: str
    html: str
    sections: list[str]
    n_trials: int


def _require_plotly() -> None:
    if importlib.util.find_spec("plotly") is None:
        raise ConfigError(
            "the report draws its plots with plotly, which is not installed: "
            'pip install "tunefleet[report]"'
        )


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna warns (and logs) about empty or experimental plots; the report says it itself."""
    logger = logging.getLogger("optuna")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


class _Snapshot(optuna.storages.InMemoryStorage):
    """An in-memory copy that hands out its trials without copying them again.

    Plot functions read ``study.trials``, which deep-copies every trial on each call (seconds on
    10,000 trials, several calls per plot); nothing in a report changes a trial, so the copy buys
    nothing here.
    """

    def get_all_trials(
        self, study_id: int, deepcopy: bool = True, states: Any = None
    ) -> list[FrozenTrial]:
        return super().get_all_trials(study_id, deepcopy=False, states=states)


def _snapshot(ref: StudyRef, trials: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study holding ``trials``: what Optuna's plot functions take."""
    with _quiet_optuna():
        study = optuna.create_study(
            study_name=ref.name,
            directions=[optuna.study.StudyDirection[d.upper()] for d in ref.directions],
            storage=_Snapshot(),
        )
        study.add_trials(trials)
    return study


def _sample(trials: list[FrozenTrial], limit: int) -> list[FrozenTrial]:
    if len(trials) <= limit:
        return trials
    picked = random.Random(0).sample(range(len(trials)), limit)
    return [trials[i] for i in sorted(picked)]


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure(key: str, fig: Any, height: int | None = None) -> str:
    fig.update_layout(template="plotly_white")
    if height is not None:
        fig.update_layout(height=height)
    height = int(fig.layout.height or 480)
    div = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"plot-{key}",
        default_width="100%",
        default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )
    return f'<div class="figure" data-figure="{key}">{div}</div>'


def _try_plot(key: str, draw: Callable[[], Any], height: int | None = None) -> str:
    """A plot, or a note saying why there is none (Optuna refuses some studies, rightly)."""
    try:
        with _quiet_optuna():
            fig = draw()
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return _note(f"not available: {exc}")
    return _figure(key, fig, height)


def build_report(storage: FleetStorage, ref: StudyRef) -> Report:
    """Read the study once and lay out every section of the report."""
    _require_plotly()
    import optuna.visualization as vis

    status = read_status(storage, ref)
    trials = load_frozen_trials(storage, ref.study_id)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    names = [
        f"objective {i} ({d})" if len(ref.directions) > 1 else f"value ({d})"
        for i, d in enumerate(ref.directions)
    ]
    multi = ref.multi_objective
    sections: list[Section] = []
    study = _snapshot(ref, trials)

    no_complete = _note("no trial has completed yet: nothing to plot")
    if multi:
        sections.append(
            Section(
                "pareto",
                "Pareto front",
                _try_plot("pareto", lambda: vis.plot_pareto_front(study))
                if complete
                else no_complete,
            )
        )
    sections.append(
        Section(
            "history",
            "Optimization history",
            _per_objective(study, "history", vis.plot_optimization_history, names)
            if complete
            else no_complete,
        )
    )
    if len(complete) >= 2:
        n_params = len({name for t in complete for name in t.params})
        importances = _try_plot(
            "importances",
            lambda: vis.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
            ),
            height=min(900, 160 + 40 * n_params * len(ref.directions)),
        )
    else:
        importances = _note("needs at least two completed trials")
    sections.append(Section("importances", "Parameter importances (PED-ANOVA)", importances))

    sample = _sample(complete, PARALLEL_MAX)
    if complete:
        sampled = study if len(sample) == len(complete) else _snapshot(ref, sample)
        note = (
            ""
            if sampled is study
            else _note(f"a random sample of {len(sample)} of {len(complete)} completed trials")
        )
        parallel = note + _per_objective(sampled, "parallel", vis.plot_parallel_coordinate, names)
    else:
        parallel = no_complete
    sections.append(Section("parallel", "Parallel coordinates", parallel))
    sections.append(
        Section(
            "slice",
            "Slice plots",
            _per_objective(study, "slice", vis.plot_slice, names) if complete else no_complete,
        )
    )

    curves = [t for t in trials if t.intermediate_values]
    if curves and not multi:
        shown = _sample(curves, INTERMEDIATE_MAX)
        note = (
            ""
            if len(shown) == len(curves)
            else _note(f"a random sample of {len(shown)} of {len(curves)} trials")
        )
        target = study if len(shown) == len(curves) else _snapshot(ref, shown)
        sections.append(
            Section(
                "intermediate",
                "Intermediate values",
                note + _try_plot("intermediate", lambda: vis.plot_intermediate_values(target)),
            )
        )

    spans = trial_spans(trials, claim_times(storage, ref.study_id), status.now)
    if spans:
        busy = fleet_busy_share(spans)
        n_workers = len({s.worker for s in spans})
        lead = f"{len(spans)} trials on {n_workers} workers" + (
            ""
            if busy is None
            else f"; workers were busy {busy:.0%} of the time between "
            "their first trial's start and their last trial's end"
        )
        timeline = _note(lead) + _figure("timeline", timeline_figure(spans))
    else:
        timeline = _note("no trial has started yet")
    sections.append(Section("timeline", "Trials per worker", timeline))

    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        sections.append(Section("failures", "Failed trials", _failures(failed)))

    saved = _artifacts(storage, ref, trials)
    if saved:
        sections.append(Section("artifacts", "Saved models (artifacts)", saved))

    page = _page(ref, status, sections)
    return Report(ref.name, page, [s.key for s in sections], len(trials))


def _per_objective(
    study: optuna.Study, key: str, plot: Callable[..., Any], names: Sequence[str]
) -> str:
    """One plot, or one per objective of a multi-objective study."""
    if len(names) == 1:
        return _try_plot(key, functools.partial(plot, study))
    return "".join(
        _try_plot(
            f"{key}-{i}",
            functools.partial(plot, study, target=_objective(i), target_name=name),
        )
        for i, name in enumerate(names)
    )


def _objective(index: int) -> Callable[[FrozenTrial], float]:
    def value(trial: FrozenTrial) -> float:
        return float(trial.values[index])

    return value


def _artifacts(storage: FleetStorage, ref: StudyRef, trials: Sequence[FrozenTrial]) -> str:
    """A table of the trials that have artifacts, each linked where the store keeps it."""
    from optuna.artifacts import get_all_artifact_meta

    from tunefleet.artifacts import artifact_location, study_artifacts

    opened = study_artifacts(storage.optuna, ref.study_id)
    if opened is None:
        return ""
    rows = []
    for t in trials:
        metas = get_all_artifact_meta(t, storage=storage.optuna)
        if not metas:
            continue
        links = ", ".join(
            f'<a href="{html.escape(artifact_location(opened[0].url, m.artifact_id))}" '
            f'download="{html.escape(m.filename)}">{html.escape(m.filename)}</a>'
            for m in metas
        )
        value = "" if t.values is None else ", ".join(f"{v:.6g}" for v in t.values)
        rows.append(f"<tr><td>{t.number}</td><td>{value}</td><td>{links}</td></tr>")
    if not rows:
        return _note(f"no trial has artifacts in {opened[0].url} yet")
    lead = _note(
        f"in {opened[0].url}; fetch the best with: tunefleet best --study {ref.name} --download DIR"
    )
    return (
        f"{lead}<table><tr><th>trial</th><th>value</th><th>artifacts</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _failures(failed: Sequence[FrozenTrial]) -> str:
    rows = "".join(
        f"<tr><td>{t.number}</td><td>{html.escape(str(t.system_attrs.get(FAIL_REASON_ATTR, '')))}"
        "</td></tr>"
        for t in list(failed)[-FAILURES_SHOWN:]
    )
    more = (
        _note(f"the last {FAILURES_SHOWN} of {len(failed)} failed trials")
        if len(failed) > FAILURES_SHOWN
        else ""
    )
    return f"{more}<table><tr><th>trial</th><th>reason</th></tr>{rows}</table>"


def _summary(status: StudyStatus) -> str:
    esc = html.escape
    states = ", ".join(f"{k.lower()} {v}" for k, v in status.states.items() if v) or "none"
    rows = [
        ("storage", status.storage),
        ("direction", ", ".join(status.directions)),
        ("trials", f"{status.n_trials} ({states})"),
    ]
    if status.budget is not None:
        rows.append(("budget", f"{status.n_counted} of {status.budget} counted"))
    if status.best is not None:
        params = ", ".join(
            f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in status.best.params.items()
        )
        value = f"{status.best_value:.6g}" if status.best_value is not None else "-"
        rows.append(("best", f"{value} (trial {status.best.number}): {params}"))
    elif status.n_pareto:
        rows.append(("Pareto front", f"{status.n_pareto} trials"))
    return (
        "<table class='summary'>"
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )


_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2733}
header,main{max-width:1200px;margin:0 auto;padding:0 24px}
header{padding-top:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:32px 0 8px;
border-bottom:1px solid #d6dde4;padding-bottom:4px}
nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
table{border-collapse:collapse;margin:8px 0} th,td{text-align:left;padding:3px 12px 3px 0;
vertical-align:top} table.summary th{color:#52606d;font-weight:600}
.note{color:#52606d;margin:6px 0} .figure{margin:8px 0 16px}
footer{color:#7b8794;font-size:13px;max-width:1200px;margin:32px auto;padding:0 24px}
"""


def _page(ref: StudyRef, status: StudyStatus, sections: Sequence[Section]) -> str:
    from plotly.offline import get_plotlyjs

    esc = html.escape
    nav = "".join(f'<a href="#{s.key}">{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{s.key}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections
    )
    generated = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>tunefleet report: {esc(ref.name)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<header><h1>Study {esc(ref.name)}</h1>{_summary(status)}<nav>{nav}</nav></header>"
        f"<main>{body}</main>"
        f"<footer>Generated by tunefleet at {esc(generated)}. Self-contained: opens offline."
        "</footer></body></html>\n"
    )


def write_report(storage: FleetStorage, ref: StudyRef, out: Path) -> Report:
    """Build the report and write it to ``out`` (its directory must exist).

    Raises:
        ConfigError: plotly is not installed, or ``out`` cannot be written.
    """
    report = build_report(storage, ref)
    try:
        out.write_text(report.html, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the report to {out} ({exc.strerror}): pass another --out"
        ) from exc
    return report
