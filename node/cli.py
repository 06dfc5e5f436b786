"""The ``pacsnode`` command line."""

from __future__ import annotations

import os

# One BLAS thread per process: pipelines vectorise over voxels themselves, and
# oversubscribed BLAS threads made SVD deconvolution 3x slower on 2 cores.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import sys
import time
from collections import defaultdict
from pathlib import Path

import click
from pydicom import dcmread

from node.config import ConfigError, NodeConfig, load_config
from node.logs import setup_logging

CONFIG_ENV = "PACSNODE_CONFIG"


def _load(config_path: str | None) -> NodeConfig:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


config_option = click.option(
    "--config", "-c", "config_path", envvar=CONFIG_ENV, type=click.Path(dir_okay=False),
    help=f"YAML configuration file (or ${CONFIG_ENV}); defaults apply without one.",
)


@click.group()
@click.version_option(package_name="pacsnode")
def main() -> None:
    """pacsnode: a DICOM node that runs imaging AI on studies and sends results to PACS.

    Research use only; not a medical device.
    """


@main.command()
@config_option
def serve(config_path: str | None) -> None:
    """Run the node: DICOM listener, routing, jobs, outbox, /metrics and /healthz."""
    config = _load(config_path)
    setup_logging(config.logging.level, config.logging.json_format)
    from node.service import Node

    try:
        node = Node(config)
    except Exception as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
    if config_path:
        os.environ[CONFIG_ENV] = str(Path(config_path).resolve())
    node.run_forever()


@main.command()
@config_option
@click.option("--queues", default="cpu,gpu", show_default=True, help="Comma-separated: cpu, gpu.")
@click.option("--concurrency", type=int, default=None, help="Parallel jobs (default: broker.worker_concurrency).")
@click.option("--pool", default="prefork", show_default=True,
              type=click.Choice(["prefork", "threads", "solo"]), help="Celery pool; prefork enforces time limits.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve this worker's /metrics here (default: http.worker_metrics_port; none if unset).")
def worker(config_path: str | None, queues: str, concurrency: int | None, pool: str,
           metrics_port: int | None) -> None:
    """Run a worker that executes pipeline jobs from the broker (scale-out mode)."""
    config = _load(config_path)
    setup_logging(config.logging.level, config.logging.json_format)
    # Before node.jobs imports prometheus_client: job metrics of every pool process in one directory.
    from node import worker_metrics
    metrics_port = metrics_port or config.http.worker_metrics_port
    try:
        if metrics_port:
            worker_metrics.prepare_multiprocess_dir(metrics_port)
    except worker_metrics.WorkerMetricsError as exc:
        raise click.ClickException(str(exc)) from exc
    from node.jobs import QUEUES, configure_celery

    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if unknown:
        raise click.ClickException(f"unknown queue(s) {unknown}; choose from {sorted(QUEUES)}")
    app = configure_celery(config)
    hostname = f"pacsnode-{'-'.join(names)}@{os.uname().nodename}"
    if metrics_port:
        try:
            worker_metrics.start_worker_metrics(config.http.host, metrics_port, hostname, ",".join(names), pool)
        except worker_metrics.WorkerMetricsError as exc:
            raise click.ClickException(str(exc)) from exc
    app.Worker(
        queues=[QUEUES[q] for q in names],
        concurrency=concurrency or config.broker.worker_concurrency,
        pool=pool,
        loglevel=config.logging.level,
        without_mingle=True,
        without_gossip=True,
        hostname=hostname,
    ).start()


def _index(config: NodeConfig):  # type: ignore[no-untyped-def]
    from node.index import Index

    path = config.spool.path / "index.sqlite"
    if not path.exists():
        raise click.ClickException(f"no index at {path}: has the node run with this spool?")
    return Index(path)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--limit", default=50, show_default=True)
def status(config_path: str | None, as_json: bool, limit: int) -> None:
    """Show studies, their jobs, and the outbox."""
    from node.service import status_report

    report = status_report(_index(_load(config_path)), limit)
    if as_json:
        click.echo(json.dumps(report, indent=1))
        return
    click.echo(f"{'STUDY INSTANCE UID':<64} {'STATE':<10} {'INST':>6}  JOBS")
    for study in report["studies"]:
        jobs = ", ".join(f"#{j['id']} {j['pipeline']}:{j['state']}" for j in study["jobs"]) or "-"
        click.echo(f"{study['study_uid']:<64} {study['state']:<10} {study['instances']:>6}  {jobs}")
        for j in study["jobs"]:
            if j["state"] == "failed" and j["reason"]:
                click.echo(f"{'':<64} job #{j['id']} failed: {j['reason']}")
    click.echo("\nOUTBOX")
    if not report["outbox"]:
        click.echo("  (empty)")
    for row in report["outbox"]:
        click.echo(f"  {row['destination']:<20} {row['state']:<8} {row['count']}")
    for dead in report["dead_letters"]:
        click.echo(f"  dead letter #{dead['id']} → {dead['destination']} after {dead['attempts']} attempts: {dead['error']}")
    for item in report.get("refused", []):
        click.echo(f"  refused #{item['id']} → {item['destination']}: {item['reason']}")


@main.command()
@config_option
@click.option("--destination", default=None, help="Only this destination.")
@click.option("--include-sent", is_flag=True, help="Send items that already arrived again too.")
@click.option("--job", "job_ids", type=int, multiple=True, help="Also re-run these failed jobs.")
def resend(config_path: str | None, destination: str | None, include_sent: bool, job_ids: tuple[int, ...]) -> None:
    """Queue dead-letter results for sending again (and optionally re-run failed jobs)."""
    index = _index(_load(config_path))
    count = index.resend(destination, include_sent)
    click.echo(f"{count} outbox item(s) queued for sending again")
    for job_id in job_ids:
        if index.retry_job(job_id):
            click.echo(f"job #{job_id} queued again (a running node dispatches it shortly)")
        else:
            click.echo(f"job #{job_id} is not a failed job; left alone", err=True)


@main.command()
@click.argument("peer")
@click.option("--calling-ae", default="PACSNODE", show_default=True)
def echo(peer: str, calling_ae: str) -> None:
    """C-ECHO a DICOM peer given as AE@HOST:PORT."""
    from node.sender import DicomSender, SendError, parse_peer

    try:
        sender = DicomSender(parse_peer(peer), calling_ae)
        status_code = sender.echo()
    except (ValueError, SendError) as exc:
        raise click.ClickException(str(exc)) from exc
    if status_code != 0:
        raise click.ClickException(f"{peer} answered C-ECHO with status 0x{status_code:04X}")
    click.echo(f"{peer}: C-ECHO succeeded")


def _dicom_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--to", "peer", required=True, help="Destination as AE@HOST:PORT.")
@click.option("--calling-ae", default="PACSNODE", show_default=True)
def send(path: Path, peer: str, calling_ae: str) -> None:
    """Send a DICOM file or folder to a peer (C-STORE)."""
    from node.sender import DicomSender, SendError, parse_peer

    try:
        sender = DicomSender(parse_peer(peer), calling_ae)
        results = sender.send(_dicom_files(path))
    except (ValueError, SendError) as exc:
        raise click.ClickException(str(exc)) from exc
    failed = [r for r in results if not r.ok]
    for r in failed:
        click.echo(f"failed: {r.path}: {r.error}", err=True)
    click.echo(f"sent {len(results) - len(failed)} of {len(results)} file(s) to {peer}")
    if failed:
        sys.exit(1)


def _read_folder(folder: Path) -> dict[str, dict[str, list[tuple[Path, object]]]]:
    """study → series → [(path, header)] for every DICOM file under *folder*."""
    studies: dict[str, dict[str, list[tuple[Path, object]]]] = defaultdict(lambda: defaultdict(list))
    for path in _dicom_files(folder):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            studies[str(ds.StudyInstanceUID)][str(ds.SeriesInstanceUID)].append((path, ds))
        except Exception:
            continue
    return studies


@main.command()
@config_option
@click.option("--dry-run", "folder", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of DICOM files to evaluate the routes against.")
@click.option("--calling-ae", default=None, help="Pretend the files came from this AE.")
def routes(config_path: str | None, folder: Path, calling_ae: str | None) -> None:
    """Print which routes and pipelines a folder of DICOM would trigger."""
    from node.listener import _int, _text
    from node.routing import Router, SeriesFacts

    config = _load(config_path)
    router = Router(config.routes, config.pipelines)
    studies = _read_folder(folder)
    if not studies:
        raise click.ClickException(f"no DICOM files found under {folder}")
    for study_uid, series_map in studies.items():
        facts = []
        for series_uid, items in series_map.items():
            first = items[0][1]
            positions = {_int(ds, "TemporalPositionIdentifier") for _, ds in items}  # type: ignore[arg-type]
            facts.append(SeriesFacts(
                series_uid=series_uid, modality=_text(first, "Modality"),  # type: ignore[arg-type]
                series_description=_text(first, "SeriesDescription"),  # type: ignore[arg-type]
                series_number=_int(first, "SeriesNumber"), body_part=_text(first, "BodyPartExamined"),  # type: ignore[arg-type]
                image_type=_text(first, "ImageType"), calling_ae=calling_ae,  # type: ignore[arg-type]
                temporal_positions=max(_int(first, "NumberOfTemporalPositions") or 1, len(positions - {None}), 1),  # type: ignore[arg-type]
                instance_count=len(items)))
        click.echo(f"study {study_uid} ({len(facts)} series)")
        for f in facts:
            click.echo(f"  series {f.series_number} {f.modality} {f.series_description!r}: "
                       f"{f.instance_count} instances, {f.temporal_positions} temporal positions")
        decisions = router.decide(facts)
        if not decisions:
            click.echo("  → no route matches")
        for d in decisions:
            dest = ", ".join(d.destinations) or "(no destination)"
            click.echo(f"  → route {d.route!r}: pipeline {d.pipeline} on {len(d.series_uids)} series → {dest}")


@main.command()
@click.argument("pipeline")
@click.argument("input_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--option", "-o", "options", multiple=True, help="Pipeline option KEY=VALUE (repeatable).")
@click.option("--clinical", "clinical_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Clinical data (JSON, as for 'pacsnode clinical put') for pipelines that use it.")
def run(pipeline: str, input_dir: Path, out_dir: Path, options: tuple[str, ...], clinical_file: Path | None) -> None:
    """Run one pipeline on a folder of DICOM, offline, writing results to --out."""
    from inference.base import PipelineError, SeriesInput, StudyInput
    from inference.registry import UnknownPipelineError, get_pipeline
    from node.clinical import ClinicalData, ClinicalDataError
    from node.jobs import encode_dataset

    setup_logging("INFO", json_format=False)
    try:
        runner = get_pipeline(pipeline)
    except UnknownPipelineError as exc:
        raise click.ClickException(str(exc)) from exc
    opts: dict[str, object] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.ClickException(f"option {item!r} is not KEY=VALUE")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    extra: dict[str, object] = {}
    if clinical_file is not None:
        try:
            extra["clinical"] = ClinicalData.parse(json.loads(clinical_file.read_text())).given()
        except (json.JSONDecodeError, ClinicalDataError) as exc:
            raise click.ClickException(f"{clinical_file}: {exc}") from exc
    studies = _read_folder(input_dir)
    if not studies:
        raise click.ClickException(f"no DICOM files found under {input_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for study_uid, series_map in studies.items():
        series = tuple(
            SeriesInput(uid, getattr(items[0][1], "Modality", None), getattr(items[0][1], "SeriesDescription", None),
                        getattr(items[0][1], "SeriesNumber", None), tuple(p for p, _ in items))
            for uid, items in series_map.items()
        )
        started = time.perf_counter()
        try:
            outputs = runner.run(StudyInput(study_uid, series, extra=extra), opts)
        except PipelineError as exc:
            raise click.ClickException(f"{pipeline} failed: {exc}") from exc
        for ds in outputs:
            target = out_dir / f"{ds.SOPInstanceUID}.dcm"
            target.write_bytes(encode_dataset(ds))
            written += 1
        click.echo(f"study {study_uid}: {len(outputs)} object(s) in {time.perf_counter() - started:.2f} s")
    click.echo(f"wrote {written} object(s) to {out_dir}")


@main.group()
def synth() -> None:
    """Write simulated phantom studies (with their ground truth) as DICOM."""


@synth.command("perfusion")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--snr", default=50.0, show_default=True, type=float, help="Tissue signal-to-noise ratio.")
def synth_perfusion(out_dir: Path, seed: int, snr: float) -> None:
    """A DSC-MRI stroke phantom: OUT_DIR/DSC/*.dcm plus ground_truth.npz and ground_truth.json."""
    from inference.perfusion.phantom_dicom import write_stroke_phantom

    write_stroke_phantom(out_dir, seed=seed, snr=snr)
    count = len(list((out_dir / "DSC").glob("*.dcm")))
    click.echo(f"wrote a DSC stroke phantom ({count} instances) and its ground truth to {out_dir}")


# --- liver phantoms (issue 5) -------------------------------------------------------------------


def _zyx(kind: type, value: str | None) -> tuple | None:
    """Parse "Z,Y,X" (e.g. --shape 48,128,128 or --spacing 4,3,3)."""
    if value is None:
        return None
    parts = value.split(",")
    try:
        parsed = tuple(kind(p) for p in parts)
    except ValueError:
        parsed = ()
    if len(parsed) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers Z,Y,X, got {value!r}")
    return parsed


def _liver_geometry(shape: str | None, spacing: str | None) -> dict[str, tuple]:
    geometry: dict[str, tuple] = {}
    if shape is not None:
        geometry["shape"] = _zyx(int, shape)  # type: ignore[assignment]
    if spacing is not None:
        geometry["spacing"] = _zyx(float, spacing)  # type: ignore[assignment]
    return geometry


def _liver_summary(out_dir: Path, phantom: object) -> None:
    lesions = getattr(phantom, "lesions", ())
    series = sorted(p.name for p in out_dir.iterdir() if p.is_dir() and p.name != "ground_truth")
    click.echo(f"study: {out_dir} ({len(series)} series: {', '.join(series)})")
    click.echo(f"ground truth: {out_dir / 'ground_truth'} (labels.npz, truth.json, truth-seg.dcm); "
               f"{len(lesions)} lesion(s): " + (", ".join(f"{les.kind.name.lower()} {les.longest_diameter_mm:.0f} mm"
                                                          for les in lesions) or "none"))


@synth.command("liver-dce")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--as-4d", "as_4d", is_flag=True, help="Write the four DCE phases as one 4D series.")
@click.option("--shape", default=None, help="Z,Y,X voxels (default 48,128,128).")
@click.option("--spacing", default=None, help="Z,Y,X mm (default 4,3,3).")
def synth_liver_dce(out_dir: Path, seed: int, as_4d: bool, shape: str | None, spacing: str | None) -> None:
    """A liver DCE-MRI phantom (pre, arterial, portal, delayed) with ground truth and a truth SEG."""
    from inference.liver.phantom import PhantomParameterError, simulate_liver_mr
    from inference.liver.phantom_dicom import write_liver_dce_study

    try:
        phantom = simulate_liver_mr(seed, **_liver_geometry(shape, spacing))
    except PhantomParameterError as exc:
        raise click.BadParameter(str(exc)) from exc
    write_liver_dce_study(phantom, out_dir, as_4d=as_4d, seed=seed)
    _liver_summary(out_dir, phantom)


@synth.command("liver-ct")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--shape", default=None, help="Z,Y,X voxels (default 48,128,128).")
@click.option("--spacing", default=None, help="Z,Y,X mm (default 4,3,3).")
@click.option("--phases", default=None,
              help="Comma-separated contrast phases for a multi-phase CT, one series each "
                   "(pre, arterial, portal, delayed; e.g. arterial,portal). Default: one portal-venous series.")
def synth_liver_ct(out_dir: Path, seed: int, shape: str | None, spacing: str | None, phases: str | None) -> None:
    """A liver CT phantom (portal venous, or the --phases of a multi-phase CT) with ground truth and a
    truth SEG."""
    from inference.liver.phantom import PhantomParameterError, simulate_liver_ct
    from inference.liver.phantom_dicom import write_liver_ct_study

    try:
        phantom = simulate_liver_ct(seed, **_liver_geometry(shape, spacing),
                                    phases=[p.strip() for p in phases.split(",") if p.strip()] if phases else None)
    except PhantomParameterError as exc:
        raise click.BadParameter(str(exc)) from exc
    write_liver_ct_study(phantom, out_dir, seed=seed)
    _liver_summary(out_dir, phantom)


@synth.command("liver-lesions")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--kinds", default=None,
              help="Comma-separated lesion kinds (cyst, hemangioma, fnh, other_benign, hcc, metastasis, "
                   "other_malignant); default: random.")
@click.option("--lesions", "n_lesions", default=None, type=int, help="Number of lesions (default: random, 0-5).")
@click.option("--as-4d", "as_4d", is_flag=True, help="Write the four DCE phases as one 4D series.")
@click.option("--shape", default=None, help="Z,Y,X voxels (default 32,224,224: the classifier's grid).")
@click.option("--spacing", default=None, help="Z,Y,X mm (default 6,1.5,1.5).")
def synth_liver_lesions(out_dir: Path, seed: int, kinds: str | None, n_lesions: int | None, as_4d: bool,
                        shape: str | None, spacing: str | None) -> None:
    """A six-sequence liver MR phantom (T2, DWI b 800, four DCE phases) for lesion classification, with
    ground truth, a truth SEG and clinical.json."""
    from inference.liver.lesion_kinds import LesionKind
    from inference.liver.phantom import PhantomParameterError
    from inference.liver.phantom_dicom import (
        phantom_accession_number,
        write_liver_lesion_study,
    )

    lesion_kinds = None
    if kinds:
        try:
            lesion_kinds = [LesionKind[k.strip().upper()] for k in kinds.split(",")]
        except KeyError as exc:
            raise click.BadParameter(f"unknown lesion kind {exc}; kinds: "
                                     f"{', '.join(k.name.lower() for k in LesionKind)}", param_hint="--kinds") from exc
    try:
        write_liver_lesion_study(out_dir, seed, lesion_kinds=lesion_kinds, n_lesions=n_lesions, as_4d=as_4d,
                                 **_liver_geometry(shape, spacing))
    except PhantomParameterError as exc:
        raise click.BadParameter(str(exc)) from exc
    truth = json.loads((out_dir / "ground_truth" / "truth.json").read_text())
    series = sorted(p.name for p in out_dir.iterdir() if p.is_dir() and p.name != "ground_truth")
    click.echo(f"study: {out_dir} ({len(series)} series: {', '.join(series)})")
    click.echo(f"ground truth: {out_dir / 'ground_truth'} (labels.npz, truth.json, truth-seg.dcm, clinical.json); "
               f"{len(truth['lesions'])} lesion(s): " + (", ".join(
                   f"{les['kind']} {les['longest_axial_diameter_mm']:.0f} mm" for les in truth["lesions"]) or "none"))
    click.echo(f"clinical data: pacsnode clinical put {phantom_accession_number(seed)} "
               f"{out_dir / 'ground_truth' / 'clinical.json'}")


@main.group()
def train() -> None:
    """Reproduce the committed model weights from the project's simulators."""


@train.command("stnet", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def train_stnet(ctx: click.Context) -> None:
    """Train the ST-Net-like perfusion model (options: see --help of the trainer, e.g. --seed, --out)."""
    from inference.perfusion.stnet_training import main as train_main

    sys.exit(train_main(ctx.args))


def _add_liver_training_command(name: str, what: str) -> None:
    """`pacsnode train <name>`: one of the liver segmentation models (options: --seed, --out, --steps, ...)."""

    @train.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                           "help_option_names": []},
                   help=f"Train the {what} (options: --seed, --out, --steps, --minutes, --data DIR; --help for all).")
    @click.pass_context
    def command(ctx: click.Context) -> None:
        from inference.liver.training import main as train_main

        sys.exit(train_main(ctx.args, name=name))


_add_liver_training_command("liver-seg-mr", "4D DCE-MRI liver/tumour fused U-Net")
_add_liver_training_command("liver-seg-ct", "CT liver/tumour 3D U-Net")
_add_liver_training_command("liver-seg-ct-multiphase", "arterial + portal-venous CT liver/tumour 3D U-Net")
_add_liver_training_command("liver-seg-ct-4d", "arterial + portal-venous CT liver/tumour fused U-Net (4D network)")
_add_liver_training_command("liver-seg-mr-baseline", "single-phase (portal) MR 3D U-Net baseline")


@train.command("liver-cls", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                              "help_option_names": []})
@click.pass_context
def train_liver_cls(ctx: click.Context) -> None:
    """Train the liver lesion classifiers A-G (options: --seed, --cases, --epochs, --models, --out; --help for all)."""
    from inference.liver.lesion_training import main as train_main

    sys.exit(train_main(ctx.args))


@main.group()
def ensemble() -> None:
    """Combine trained models of the same inputs into one (research use)."""


@ensemble.command("liver-seg", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                                 "help_option_names": []})
@click.pass_context
def ensemble_liver_seg(ctx: click.Context) -> None:
    """Average liver segmentation models' probabilities: VERSION MEMBER.json MEMBER.json... (--help for all)."""
    from inference.liver.training import ensemble_main

    sys.exit(ensemble_main(ctx.args))


@main.group()
def evaluate() -> None:
    """Accuracy reports of pipelines on simulated studies with known truth (research use)."""


@evaluate.command("perfusion")
@click.option("--cases", default=3, show_default=True, type=int, help="Held-out stroke phantoms to simulate.")
@click.option("--snr", default=50.0, show_default=True, type=float, help="Tissue signal-to-noise ratio.")
@click.option("--seed", "first_seed", default=1001, show_default=True, type=int,
              help="Seed of the first phantom; the others follow (seed+1, ...). Training seeds are refused.")
@click.option("--methods", default="osvd,csvd,ssvd,stnet", show_default=True, help="Comma-separated methods.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate_perfusion(cases: int, snr: float, first_seed: int, methods: str, as_json: bool) -> None:
    """Every perfusion method side by side on held-out stroke phantoms: map, lesion and DEFUSE 3 accuracy."""
    from inference.perfusion.evaluation import EvaluationError, format_report
    from inference.perfusion.evaluation import evaluate_perfusion as run_evaluation

    try:
        report = run_evaluation(cases, snr, first_seed, [m.strip() for m in methods.split(",") if m.strip()])
    except EvaluationError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@evaluate.command("liver-cls", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                                 "help_option_names": []})
@click.pass_context
def evaluate_liver_cls(ctx: click.Context) -> None:
    """The lesion classifiers A-G on held-out phantoms, as seed 003's Tables 1-4 (options: --cases, --seed,
    --models, --json; --help for all)."""
    from inference.liver.lesion_evaluation import main as evaluate_main

    sys.exit(evaluate_main(ctx.args))


@evaluate.command("liver-seg")
@click.option("--modality", type=click.Choice(["mr", "ct"]), default="mr", show_default=True)
@click.option("--cases", default=5, show_default=True, type=int, help="Held-out liver phantoms to simulate.")
@click.option("--seed", "first_seed", default=0, show_default=True, type=int,
              help="Seed of the first phantom; the others follow. Training seeds are refused.")
@click.option("--model", "model_path", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest of the model to score, labelled by its version (default: the committed one the "
                   "pipeline would run on a study of the phantoms' grid).")
@click.option("--baseline", "baseline_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest of the single-phase model it is compared with (MR: the portal-phase baseline; "
                   "CT: the portal-venous model; default: the committed one, on CT the one the pipeline picks "
                   "for the phantoms' grid).")
@click.option("--no-baseline", is_flag=True,
              help="Score only the model (and any --compare), not the single-phase one beside it.")
@click.option("--compare", "compared", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest of a further model scored beside them, labelled by its version (repeatable).")
@click.option("--spacing", type=float, nargs=3, default=None, metavar="Z Y X",
              help="Simulate the phantoms on this grid, in mm (default: the simulator's 4 3 3); each model "
                   "resamples them onto its own grid, as it would a study of that protocol.")
@click.option("--min-lesion-ml", type=click.FloatRange(min=0), default=None, metavar="ML",
              help="Make smaller predicted lesions liver, as a route's min_lesion_ml does (default: the "
                   "pipeline's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate_liver_seg(modality: str, cases: int, first_seed: int, model_path: Path | None,
                       baseline_path: Path | None, no_baseline: bool, compared: tuple[Path, ...],
                       spacing: tuple[float, float, float] | None, min_lesion_ml: float | None,
                       as_json: bool) -> None:
    """Liver/tumour Dice, IoU, HD95, precision, recall and lesion detection on held-out phantoms
    (MR: the 4D model beside the single-phase baseline; CT: the multi-phase model the pipeline
    picks for the phantoms' grid beside the portal-venous one; ``--compare`` adds others)."""
    from inference.liver.comparison import compare_models, format_comparison
    from inference.liver.phantom import DEFAULT_SPACING
    from inference.liver.pipeline import model_for_grid
    from inference.liver.weights import LiverModelError, default_weights

    if no_baseline and baseline_path is not None:
        raise click.UsageError("--baseline and --no-baseline contradict each other; give one")
    grid = spacing if spacing is not None else DEFAULT_SPACING
    if modality == "mr":
        label, default = "4D fused U-Net", model_for_grid("mr", grid)
        baseline: tuple[str, Path] = ("single-phase baseline", baseline_path or default_weights("mr-baseline"))
    else:
        label, default = "multi-phase CT model", model_for_grid("ct-multiphase", grid)
        baseline = ("portal-venous CT U-Net", baseline_path or model_for_grid("ct", grid))
    models: dict[str, str | Path] = {model_path.stem if model_path else label: model_path or default}
    if not no_baseline:
        models[baseline[0]] = baseline[1]
    models.update({path.stem: path for path in compared})
    try:
        report = compare_models(modality, cases, first_seed, models,
                                log=None if as_json else lambda line: click.echo(line, err=True), spacing=spacing,
                                min_lesion_ml=min_lesion_ml)
    except (LiverModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report, indent=2) if as_json else format_comparison(report))


@main.command()
def pipelines() -> None:
    """List the installed pipelines."""
    from inference.registry import available_pipelines

    for name, cls in sorted(available_pipelines().items()):
        click.echo(f"{name:<24} queue={cls.queue:<4} v{cls.version}  {cls.summary}")


# -- clinical data (node.clinical) ----------------------------------------------


def _clinical_store(config_path: str | None):  # type: ignore[no-untyped-def]
    from node.audit import AuditLog
    from node.clinical import ClinicalStore

    config = _load(config_path)
    return ClinicalStore(_index(config), AuditLog(config.logging.audit_log or config.spool.path / "audit.log"))


@main.group()
def clinical() -> None:
    """Clinical data per AccessionNumber (age, sex, history, tumour markers, liver function) for pipelines."""


@clinical.command("put")
@config_option
@click.argument("accession")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def clinical_put(config_path: str | None, accession: str, file: Path) -> None:
    """Validate FILE (JSON or YAML) and store it as the clinical data of ACCESSION, replacing any earlier."""
    import yaml

    from node.clinical import ClinicalData, ClinicalDataError

    try:
        text = file.read_text(encoding="utf-8")
        payload = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise click.ClickException(f"cannot read {file}: {exc}") from exc
    try:
        record = _clinical_store(config_path).put(accession, ClinicalData.parse(payload), source=f"cli:{file.name}")
    except ClinicalDataError as exc:
        raise click.ClickException(f"{file}: {exc}") from exc
    click.echo(f"stored {len(record.data.given())} clinical field(s) for accession {record.accession_number}")


@clinical.command("show")
@config_option
@click.argument("accession")
def clinical_show(config_path: str | None, accession: str) -> None:
    """Print the stored clinical data of ACCESSION as JSON (values in the units their names carry)."""
    from node.clinical import ClinicalDataError

    try:
        record = _clinical_store(config_path).get(accession)
    except ClinicalDataError as exc:
        raise click.ClickException(str(exc)) from exc
    if record is None:
        raise click.ClickException(f"no clinical data for accession {accession!r}")
    click.echo(json.dumps(record.as_json(), indent=1))


@clinical.command("delete")
@config_option
@click.argument("accession")
def clinical_delete(config_path: str | None, accession: str) -> None:
    """Remove the clinical data of ACCESSION."""
    from node.clinical import ClinicalDataError

    try:
        deleted = _clinical_store(config_path).delete(accession)
    except ClinicalDataError as exc:
        raise click.ClickException(str(exc)) from exc
    if not deleted:
        raise click.ClickException(f"no clinical data for accession {accession!r}")
    click.echo(f"deleted the clinical data of accession {accession.strip()}")

if __name__ == "__main__":
    main()
