"""``tunefleet k8s render|apply|status|logs|delete``: a study's fleet as a Kubernetes Job."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from tunefleet.cli._options import db_wait_option, emit, output_option
from tunefleet.cli._study import build_spec, study_options
from tunefleet.constants import READ_DB_WAIT_S
from tunefleet.errors import TunefleetError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from tunefleet.config import StudySpec
    from tunefleet.kubernetes import Cluster, FleetOptions
    from tunefleet.summary import StudyStatus

# tunefleet.kubernetes, its YAML and the rich widgets are imported by the commands that use them:
# every `tunefleet worker` (each pod, each local worker) loads this module to build the CLI.

__all__ = ["k8s"]

F = TypeVar("F", bound=Callable[..., Any])
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_POD_STYLES = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan")


def _spec_options(func: F) -> F:
    """The study options of ``run``/``worker``, less ``--storage`` (pods get it from the Secret)
    and ``-o/--json`` (the summary of a local run)."""
    func = study_options(func)
    params = getattr(func, "__click_params__", [])
    func.__click_params__ = [p for p in params if p.name not in ("storage", "as_json", "output")]  # type: ignore[attr-defined]
    return func


def _fleet_options(func: F) -> F:
    """How the workers run as pods; flags override the spec's [kubernetes] table."""
    options = [
        click.option("--image", metavar="REPO/IMG:TAG", help="Container image with tunefleet."),
        click.option("--workers", type=int, help="Worker pods at once (Job parallelism)."),
        click.option("--cpu", help="CPUs per worker, request = limit [1]; sizes its threads."),
        click.option("--memory", help="Memory per worker, request = limit [2Gi]."),
        click.option("--gpu", type=int, help="nvidia.com/gpu per worker [0]."),
        click.option("-n", "--namespace", help="Namespace [the kubeconfig context's]."),
        click.option("--secret", help="Secret holding the storage URL [tunefleet-STUDY-storage]."),
        click.option(
            "--node-selector",
            "node_selector",
            multiple=True,
            metavar="KEY=VALUE",
            help="Node label the pods require (repeatable), e.g. a GPU node pool's.",
        ),
        click.option(
            "--env", "pod_env", multiple=True, metavar="KEY=VALUE", help="Pod env var (repeatable)."
        ),
        click.option("--pull-policy", type=click.Choice(_PULL_POLICIES), help="imagePullPolicy."),
        click.option(
            "--image-pull-secret",
            "image_pull_secrets",
            multiple=True,
            metavar="SECRET",
            help="Secret with a private registry's credentials (repeatable).",
        ),
        click.option(
            "--backoff-limit", type=int, help="Failed pods before the Job fails [3 x workers]."
        ),
        click.option("--ttl", type=int, metavar="SECONDS", help="Keep a finished Job [86400]."),
        click.option(
            "--deadline-margin",
            type=int,
            metavar="SECONDS",
            help="Job deadline = study --timeout + this [1800].",
        ),
        click.option(
            "--termination-grace",
            type=int,
            metavar="SECONDS",
            help="Time a pod gets to hand back its trial on SIGTERM [20].",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


#: ``--study`` for commands on a running fleet (status, logs, delete): optional when the
#: namespace holds one fleet.
_fleet_study_option = click.option(
    "--study",
    "--study-name",
    "study",
    metavar="NAME",
    help="Study name [the only fleet in the namespace].",
)


def _cluster_options(func: F) -> F:
    options = [
        click.option("-n", "--namespace", help="Namespace [the kubeconfig context's]."),
        click.option("--context", help="kubeconfig context [its current context]."),
        click.option(
            "--kubeconfig", metavar="FILE", help="kubeconfig [$KUBECONFIG, ~/.kube/config]."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"'{item}': write KEY=VALUE", param_hint=flag)
        out[key.strip()] = value
    return out


def _build(
    objective: str | None,
    config_path: str | None,
    objective_args: Sequence[str],
    directions: Sequence[str],
    fleet_flags: dict[str, Any],
    study_flags: dict[str, Any],
) -> tuple[StudySpec, FleetOptions]:
    from tunefleet import kubernetes as k8s_api

    spec = build_spec(
        objective,
        config_path,
        objective_args,
        directions,
        workers=fleet_flags.pop("workers"),
        **study_flags,
    )
    options = k8s_api.options_from_config(config_path).merged(
        node_selector=_pairs(fleet_flags.pop("node_selector"), "--node-selector"),
        env=_pairs(fleet_flags.pop("pod_env"), "--env"),
        image_pull_secrets=tuple(fleet_flags.pop("image_pull_secrets")),
        **fleet_flags,
    )
    return spec, options


_FLEET_KEYS = (
    "image",
    "workers",
    "cpu",
    "memory",
    "gpu",
    "namespace",
    "secret",
    "node_selector",
    "pod_env",
    "pull_policy",
    "image_pull_secrets",
    "backoff_limit",
    "ttl",
    "deadline_margin",
    "termination_grace",
)


def _split(flags: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    fleet_flags = {k: flags.pop(k) for k in _FLEET_KEYS}
    return fleet_flags, flags


@click.group("k8s")
def k8s() -> None:
    """Run a study's workers as a Kubernetes Job: render, apply, status, logs, delete.

    The same study spec as `tunefleet run`, plus the image and each worker's resources. The
    storage URL reaches the pods only through a Secret. See docs/kubernetes.md. Example:

    \b
        tunefleet k8s apply sklearn-iris --study iris --n-trials 300 \\
            --image tunefleet:0.1.0 --workers 3 --env-file .env
        tunefleet k8s status --study iris --watch
    """


@k8s.command()
@_spec_options
@_fleet_options
@click.option(
    "--kube-version",
    metavar="X.Y",
    help="Render for this Kubernetes version: below 1.26, no podFailurePolicy [the newest].",
)
def render(
    objective: str | None,
    config_path: str | None,
    objective_args: tuple[str, ...],
    directions: tuple[str, ...],
    kube_version: str | None,
    **flags: Any,
) -> int:
    """Print the Job's YAML; touch no cluster. The Job reads the storage URL from a Secret.

    Example:

    \b
        tunefleet k8s render sklearn-iris --study iris --n-trials 300 \\
            --image tunefleet:0.1.0 --workers 3 > job.yaml
    """
    from tunefleet import kubernetes as k8s_api

    fleet_flags, study_flags = _split(flags)
    spec, options = _build(
        objective, config_path, objective_args, directions, fleet_flags, study_flags
    )
    version = k8s_api.parse_kube_version(kube_version) if kube_version else None
    job = k8s_api.job_manifest(spec, options, version)
    _warn_old_server(job, version)
    study = k8s_api.study_name(spec)
    secret = k8s_api.secret_name(study, options)
    header = (
        f"tunefleet fleet for study {study}: {spec.workers} workers of {options.image}.\n"
        f"The pods read the storage URL from Secret {secret}, key {options.secret_key}; create it "
        f"with\n  kubectl create secret generic {secret} "
        f"--from-literal={options.secret_key}='postgresql://USER:PASSWORD@HOST/DB?sslmode=require'\n"
        "or let `tunefleet k8s apply --env-file .env` create it."
    )
    if spec.artifacts and spec.artifacts.startswith("s3://"):
        header += (
            f"\nThe S3 credentials for --artifacts come from Secret "
            f"{k8s_api.artifacts_secret_name(study, options)} (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), which `k8s apply` makes from "
            "--env-file or the environment."
        )
    click.echo(k8s_api.to_yaml([job], header=header), nl=False)
    return 0


@k8s.command()
@_spec_options
@_fleet_options
@click.option("--context", help="kubeconfig context [its current context].")
@click.option("--kubeconfig", metavar="FILE", help="kubeconfig [$KUBECONFIG, ~/.kube/config].")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="A .env file with TUNEFLEET_STORAGE (or DATABASE_URL) [the environment's].",
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would be sent (password masked); send nothing."
)
def apply(
    objective: str | None,
    config_path: str | None,
    objective_args: tuple[str, ...],
    directions: tuple[str, ...],
    context: str | None,
    kubeconfig: str | None,
    env_file: str | None,
    dry_run: bool,
    **flags: Any,
) -> int:
    """Create or update the storage Secret and the Job, then say what to run next.

    The storage URL comes from --env-file, else `storage` in --config, else $TUNEFLEET_STORAGE
    or $DATABASE_URL; without one, an existing Secret is used. Example:

    \b
        tunefleet k8s apply --config study.toml --image tunefleet:0.1.0 --workers 8 \\
            --env-file .env
    """
    from rich.console import Console

    from tunefleet import kubernetes as k8s_api
    from tunefleet.kubernetes import _fleet as fleet
    from tunefleet.storage import display_url

    fleet_flags, study_flags = _split(flags)
    spec, options = _build(
        objective, config_path, objective_args, directions, fleet_flags, study_flags
    )
    err = Console(stderr=True, highlight=False)
    url, warnings = fleet.pod_storage_url(env_file, spec.storage)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    study = k8s_api.study_name(spec)
    job = k8s_api.job_manifest(spec, options)

    artifacts_secret = _artifacts_secret(spec, options, study, env_file)
    if dry_run:
        objects: list[dict[str, Any]] = []
        if artifacts_secret is not None:
            masked = dict(artifacts_secret)
            masked["stringData"] = {k: "***" for k in masked.pop("data")}
            objects.append(masked)
        if url is not None:
            shown = k8s_api.secret_manifest(study, options, "")
            del shown["data"]
            shown["stringData"] = {options.secret_key: display_url(url)}
            objects.append(shown)
        click.echo(
            k8s_api.to_yaml(
                [*objects, job],
                header="dry run: nothing was sent. The Secret is sent base64-encoded in 'data';\n"
                "its password is masked here."
                if url
                else "dry run: nothing was sent. No storage URL given: the Job uses the Secret "
                "already in the cluster.",
            ),
            nl=False,
        )
        return 0

    cluster = k8s_api.connect(kubeconfig=kubeconfig, context=context, namespace=options.namespace)
    # Server-side apply refuses fields the server does not know (podFailurePolicy before 1.26).
    version = cluster.server_version()
    job = k8s_api.job_manifest(spec, options, version)
    _warn_old_server(job, version)
    job["metadata"]["namespace"] = cluster.namespace
    secret = None
    if url is not None:
        secret = k8s_api.secret_manifest(study, options, url)
        secret["metadata"]["namespace"] = cluster.namespace
    if artifacts_secret is not None:
        artifacts_secret["metadata"]["namespace"] = cluster.namespace
        cluster.apply(artifacts_secret)
    outcome = fleet.apply_fleet(cluster, job, secret)
    out = Console(highlight=False)
    secret_name = k8s_api.secret_name(study, options)
    if url is not None:
        out.print(f"secret {secret_name}: storage {display_url(url)}", markup=False)
    else:
        out.print(f"secret {secret_name}: already in the cluster (not changed)", markup=False)
    out.print(
        f"job {job['metadata']['name']} {outcome}: {spec.workers} workers of {options.image} "
        f"in namespace '{cluster.namespace}' (context '{cluster.context}')",
        markup=False,
    )
    where = _where(options.namespace, context, kubeconfig)
    out.print("next:", markup=False)
    for command in (
        f"tunefleet k8s status --study {study}{where} --watch",
        f"tunefleet k8s logs --study {study}{where} --follow",
        f"tunefleet k8s delete --study {study}{where}",
    ):
        out.print(f"  {command}", markup=False)
    return 0


def _warn_old_server(job: dict[str, Any], version: tuple[int, int] | None) -> None:
    from tunefleet import kubernetes as k8s_api

    note = k8s_api.kube_version_note(job, version)
    if note:
        click.echo(f"warning: {note}", err=True)


def _artifacts_secret(
    spec: StudySpec, options: FleetOptions, study: str, env_file: str | None
) -> dict[str, Any] | None:
    """The Secret with the S3 credentials of an ``s3://`` artifact store, from --env-file
    (else the environment); None when there is no S3 store or no credential to put in it."""
    from tunefleet import kubernetes as k8s_api
    from tunefleet.kubernetes import _fleet as fleet

    if not spec.artifacts or not spec.artifacts.startswith("s3://"):
        return None
    values = fleet.read_env_file(env_file) if env_file else dict(os.environ)
    secret = k8s_api.artifacts_secret_manifest(study, options, values)
    return secret if secret["data"] else None


def _where(namespace: str | None, context: str | None, kubeconfig: str | None) -> str:
    parts = [f" -n {namespace}" if namespace else "", f" --context {context}" if context else ""]
    return "".join(parts) + (f" --kubeconfig {kubeconfig}" if kubeconfig else "")


@k8s.command()
@_fleet_study_option
@_cluster_options
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="A .env with a storage URL reachable from here [the pods' Secret, then the environment].",
)
@click.option("--watch", is_flag=True, help="Refresh until the Job has finished.")
@click.option("--interval", type=float, default=5.0, help="Seconds between refreshes [5].")
@output_option("table", "json", "yaml")
@db_wait_option()
def status(
    study: str | None,
    namespace: str | None,
    context: str | None,
    kubeconfig: str | None,
    env_file: str | None,
    watch: bool,
    interval: float,
    output: str,
    db_wait: float,
) -> int:
    """Show the Job, each worker pod and the study's progress side by side.

    The progress is read from the database; if it cannot be reached from this machine, the pods
    are shown anyway with a note. Example:

        tunefleet k8s status --study iris --watch
    """
    from rich.console import Console
    from rich.live import Live

    from tunefleet import kubernetes as k8s_api
    from tunefleet.cli._monitor import quiet_retries
    from tunefleet.kubernetes import _fleet as fleet

    quiet_retries()
    cluster = k8s_api.connect(kubeconfig=kubeconfig, context=context, namespace=namespace)
    job = fleet.find_job(cluster, study)
    urls = fleet.progress_urls(cluster, job, env_file)
    if output != "table" and not watch:
        emit(_status_json(cluster, job, urls, db_wait), output)
        return 0
    console = Console(highlight=False)
    if not watch:
        console.print(_status_view(cluster, job, urls, db_wait))
        return 0
    gone = _gone_line(job, cluster.namespace)
    try:
        if output != "table":  # a document per refresh, as the local `status -o json --watch`
            current: dict[str, Any] | None = job
            while current is not None:
                emit(_status_json(cluster, current, urls, db_wait), output)
                if fleet.job_state(current)[0] in ("Complete", "Failed"):
                    return 0
                time.sleep(interval)
                current = cluster.get("Job", job["metadata"]["name"])
            emit(_gone_json(cluster, job, gone), output)
            return 0
        with Live(
            _status_view(cluster, job, urls, db_wait), console=console, auto_refresh=False
        ) as live:
            while fleet.job_state(job)[0] not in ("Complete", "Failed"):
                time.sleep(interval)
                refreshed = cluster.get("Job", job["metadata"]["name"])
                if refreshed is None:
                    break
                job = refreshed
                live.update(_status_view(cluster, job, urls, db_wait), refresh=True)
            else:
                return 0
        # The last frame would still say "Running": say plainly that the Job is gone.
        console.print(gone, markup=False)
    except KeyboardInterrupt:
        return 130
    return 0


def _gone_line(job: dict[str, Any], namespace: str) -> str:
    from tunefleet.kubernetes import _fleet as fleet

    return (
        f"job {job['metadata']['name']} is gone from namespace '{namespace}' (deleted, or removed "
        f"after its TTL): its pods stop and hand their trials back; study {fleet.study_of(job)} "
        "stays in the database"
    )


def _gone_json(cluster: Cluster, job: dict[str, Any], line: str) -> dict[str, Any]:
    return {
        "job": {
            "name": job["metadata"]["name"],
            "namespace": cluster.namespace,
            "state": "Deleted",
            "message": line,
            "active": 0,
            "succeeded": 0,
            "failed": 0,
            "restarts": 0,
            "backoff_limit": job["spec"].get("backoffLimit"),
        },
        "pods": [],
        "study": None,
        "note": line,
    }


def _progress(
    urls: list[str], study: str, db_wait: float = READ_DB_WAIT_S
) -> tuple[StudyStatus | None, str]:
    from tunefleet.kubernetes import _fleet as fleet

    if not urls:
        return None, (
            "no storage URL here and the pods' Secret is unreadable: pass --env-file or set "
            "TUNEFLEET_STORAGE to see the study's progress"
        )
    problem = ""
    for url in urls:
        try:
            return fleet.study_progress(url, study, db_wait), ""
        except TunefleetError as exc:
            problem = problem or str(exc)
    return None, f"{problem} (the pods above are what the cluster says)"


def _status_json(
    cluster: Cluster, job: dict[str, Any], urls: list[str], db_wait: float
) -> dict[str, Any]:
    from tunefleet.kubernetes import _fleet as fleet

    state, message = fleet.job_state(job)
    summary, note = _progress(urls, fleet.study_of(job), db_wait)
    status = job.get("status", {})
    pods = fleet.worker_pods(cluster, job)
    return {
        "job": {
            "name": job["metadata"]["name"],
            "namespace": cluster.namespace,
            "state": state,
            "message": message,
            "active": status.get("active", 0),
            "succeeded": status.get("succeeded", 0),
            "failed": status.get("failed", 0),
            "restarts": fleet.replaced_pods(cluster, job, pods),
            "backoff_limit": job["spec"].get("backoffLimit"),
        },
        "pods": [p.to_json() for p in fleet.pod_rows(job, pods)],
        "study": summary.to_json() if summary else None,
        "note": note or None,
    }


def _status_view(
    cluster: Cluster, job: dict[str, Any], urls: list[str], db_wait: float
) -> RenderableType:
    from rich.columns import Columns
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from tunefleet.kubernetes import _fleet as fleet

    state, message = fleet.job_state(job)
    status = job.get("status", {})
    study = fleet.study_of(job)
    head = Text()
    head.append(f"job {job['metadata']['name']}", style="bold")
    head.append(f"  study {study}  namespace {cluster.namespace} (context {cluster.context})\n")
    pod_list = fleet.worker_pods(cluster, job)
    head.append(
        f"{state}: {status.get('active', 0)} active, {status.get('succeeded', 0)} succeeded, "
        f"{status.get('failed', 0)} failed, {fleet.replaced_pods(cluster, job, pod_list)} "
        f"restarts (backoffLimit {job['spec'].get('backoffLimit')})",
        style={"Complete": "green", "Failed": "red"}.get(state, ""),
    )
    if message:
        head.append(f"\n{message}")

    pods = Table(box=None, pad_edge=False, header_style="bold")
    # No RESTARTS column: with restartPolicy Never a pod never restarts in place; replacements
    # are new pods, counted in the line above.
    for column in ("POD", "PHASE", "NODE", "AGE", "LAST EXIT"):
        pods.add_column(column, no_wrap=column == "POD")
    rows = fleet.pod_rows(job, pod_list)
    for row in rows:
        pods.add_row(row.name, row.phase, row.node, _duration(row.age_s), row.exit)
    if not rows:
        pods.add_row("(no pods yet)", "", "", "", "")

    summary, note = _progress(urls, study, db_wait)
    progress = Table.grid(padding=(0, 2))
    progress.add_column(style="bold")
    progress.add_column()
    if summary is None:
        progress.add_row("study", Text(note, style="yellow"))
    else:
        counted = f"{summary.n_counted}" + (f" of {summary.budget}" if summary.budget else "")
        states = ", ".join(f"{k} {v}" for k, v in summary.states.items() if v)
        progress.add_row("study", summary.study)
        progress.add_row("trials", f"{counted} counted" + (f" ({states})" if states else ""))
        progress.add_row("best", "-" if summary.best_value is None else f"{summary.best_value:.6g}")
        if summary.budget:
            progress.add_row("budget", f"{summary.budget_left} left")
        if summary.deadline_left_s is not None:
            progress.add_row("deadline", f"{_duration(summary.deadline_left_s)} left")
        progress.add_row("done", "yes" if summary.done else "no")
    return Group(head, Text(), Columns([pods, progress], padding=(0, 6)))


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def _seconds(_ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """A duration as kubectl writes it (``90s``, ``5m``, ``1h30m``; a bare number is seconds),
    in whole seconds."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise click.BadParameter(f"'{value}' is not a duration: write e.g. 30s, 5m, 2h or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@k8s.command()
@_fleet_study_option
@_cluster_options
@click.option("-f", "--follow", is_flag=True, help="Stream until the Job has finished.")
@click.option(
    "--tail",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Only the last N lines of each pod (as kubectl logs --tail).",
)
@click.option(
    "--since",
    callback=_seconds,
    metavar="DURATION",
    help="Only lines newer than this, e.g. 10m or 1h (as kubectl logs --since).",
)
@click.option("--timestamps", is_flag=True, help="Start each line with the time its pod wrote it.")
def logs(
    study: str | None,
    namespace: str | None,
    context: str | None,
    kubeconfig: str | None,
    follow: bool,
    tail: int | None,
    since: int | None,
    timestamps: bool,
) -> int:
    """Print every worker pod's log, each line prefixed by its pod, as stern does.

    With --follow, streams all pods at once and picks up replacement pods as they start, until
    the Job has finished; --tail and --since limit what is shown of the pods running at the
    start, a replacement is shown whole. Examples:

    \b
        tunefleet k8s logs --study iris --follow
        tunefleet k8s logs --study iris --since 10m --timestamps
    """
    from rich.console import Console
    from rich.text import Text

    from tunefleet import kubernetes as k8s_api
    from tunefleet.kubernetes import _fleet as fleet

    cluster = k8s_api.connect(kubeconfig=kubeconfig, context=context, namespace=namespace)
    job = fleet.find_job(cluster, study)
    console = Console(highlight=False, soft_wrap=True)
    styles: dict[str, str] = {}

    def emit(pod: str, line: str) -> None:
        style = styles.setdefault(pod, _POD_STYLES[len(styles) % len(_POD_STYLES)])
        console.print(Text.assemble((f"[{pod}] ", style), line))

    try:
        fleet.stream_logs(
            cluster, job, emit, follow=follow, tail=tail, since=since, timestamps=timestamps
        )
    except KeyboardInterrupt:
        return 130
    return 0


@k8s.command()
@_fleet_study_option
@_cluster_options
@click.option("--with-secret", is_flag=True, help="Delete the storage Secret too.")
def delete(
    study: str | None,
    namespace: str | None,
    context: str | None,
    kubeconfig: str | None,
    with_secret: bool,
) -> int:
    """Delete the Job and its pods (and the Secret if asked); the study stays in the database.

    The pods get SIGTERM and hand their running trials back. Example:

        tunefleet k8s delete --study iris --with-secret
    """
    from rich.console import Console

    from tunefleet import kubernetes as k8s_api
    from tunefleet.kubernetes import ClusterError
    from tunefleet.kubernetes import _fleet as fleet

    cluster = k8s_api.connect(kubeconfig=kubeconfig, context=context, namespace=namespace)
    try:
        job: dict[str, Any] | None = fleet.find_job(cluster, study)
    except ClusterError:
        # The Job is gone (deleted before, or by its TTL): its Secret may still be there.
        if not (with_secret and study):
            raise
        job = None
    name = fleet.study_of(job) if job is not None else str(study)
    deleted = fleet.delete_fleet(cluster, job, with_secret, name)
    if job is None and not deleted:
        raise ClusterError(
            f"no fleet and no storage Secret for study '{name}' in namespace "
            f"'{cluster.namespace}' (context '{cluster.context}'): nothing to delete; pick the "
            "right --namespace/--context"
        )
    out = Console(highlight=False)
    out.print(
        f"deleted {', '.join(deleted) or 'nothing'} from namespace '{cluster.namespace}'",
        markup=False,
    )
    out.print(
        f"study {name} stays in the database; its pods hand their running trials back as they stop",
        markup=False,
    )
    return 0
