"""Train: settings (derived from TrainConfig), then a live view of the one background job (it survives refreshes)."""

import json

import pandas as pd
import streamlit as st

from app_pages.ui.charts import history_chart, training_curves
from app_pages.ui.config_form import config_form
from app_pages.ui.lr_find import render_lr_finder
from app_pages.ui.shared import (
    backbone_rows,
    choices,
    chosen_backbone,
    dataset_label,
    flash,
    job_manager,
    plain,
    scan_report,
    speeds,
)
from tl_core import paths, plan
from tl_core.config import TrainConfig
from tl_core.data.sources import DatasetError, DatasetSpec, describe_split
from tl_core.devices import pick_device
from tl_core.formats import TABLE_PERCENT, TABLE_SECONDS, count, loss, percent, points, seconds
from tl_core.jobs.manager import Job, JobBusy, usable_gpus
from tl_core.jobs.state import KILL_GRACE_S, JobSnapshot
from tl_core.measure import speed
from tl_core.measure.estimate import Estimate, estimate
from tl_core.train.events import EpochRow
from tl_core.train.runs import RunBroken, RunStatus, delete_run, history_rows, list_runs, load_run

jobs = job_manager()
spec = choices().dataset
name = chosen_backbone()
info = next(r for r in backbone_rows() if r.name == name)


@st.cache_data(ttl=60, show_spinner="Estimating the time...")
def cached_estimate(spec: DatasetSpec, config_json: str, measured: float) -> Estimate:
    """Keyed by the config's JSON and the measurement time: a new measurement or setting gives a new estimate."""
    return estimate(scan_report(spec), TrainConfig.from_dict(json.loads(config_json)))


def settings_form() -> None:
    try:
        report = scan_report(spec)
    except DatasetError as e:
        st.error(f"The chosen dataset cannot be used: {plain(e)}")
        return
    n = report.split_counts()
    skipped = f", {count(len(report.skipped), 'file')} skipped (see the Dataset page)" if report.skipped else ""
    st.markdown(f"**{plain(report.name)}**: {n.get('train', 0)} training and {n.get('val', 0)} validation images "
                f"({report.split_source}{skipped}), {len(report.classes)} classes. "
                f"Backbone **{name}** ({info.size_mb} MB, ImageNet acc@1 {info.acc1:.1f}%).")
    if not info.cached:
        cached = [r.name for r in backbone_rows() if r.cached]
        st.warning(f"{name}'s weights are not cached: starting will try to download them. Offline, put "
                   f"`{info.weight_file}` into `{paths.torch_checkpoints()}`, or untick *Pretrained weights* under More "
                   "settings to train from scratch. "
                   + (f"Cached now: {', '.join(cached)}." if cached else "No backbone's weights are cached yet."))
    config = config_form(name)
    if plan.fits_head(config):
        st.caption("Feature extraction fits the new head to convergence on the cached embeddings (L-BFGS logistic "
                   "regression, its regularisation chosen by 5-fold cross-validation on the training split), so epochs, "
                   "learning rate and batch size do not apply; the log shows the strength it chose.")
    if plan.class_weights(config, list(report.counts.get("train", {}).values())):
        st.caption(f"Classes are weighted by the inverse of their share of the training images (largest over smallest "
                   f"class {report.imbalance:.1f}x; setting Class balance under More settings), so the small classes "
                   "count as much as the big ones; the run shows balanced accuracy beside accuracy.")
    if not plan.fits_head(config):  # a head fitted outright needs no learning rate search
        render_lr_finder(spec, config, lr_key="cfg_lr")
    measured = speeds().get(name)
    if measured:
        est = cached_estimate(spec, json.dumps(config.to_dict()), measured.measured)
        st.caption(f"Estimated time: {est.describe()}, from {name}'s speed measured on this device.")
    elif st.button(f"Estimate the time (measures {name} here, a few seconds)", key="train_measure"):
        with st.spinner(f"Measuring {name}..."):
            speed.measure(name, pick_device(config.device))
        st.rerun()
    cannot_learn = plan.cannot_learn(config)
    if cannot_learn:
        st.error(cannot_learn)
    gpus = usable_gpus()
    workers = st.number_input("GPUs to use", 1, gpus, gpus, key="train_gpus",
                              help="one training process per GPU (torchrun, DistributedDataParallel)") if gpus > 1 else 1
    if st.button("Start training", type="primary", key="train_start", disabled=bool(cannot_learn)):
        try:
            jobs.start(spec, config, workers=workers)
            st.rerun()
        except JobBusy as err:
            st.warning(f"Busy: {plain(err)}")
        except ValueError as err:
            st.error(plain(err))


WATCH_EVERY_S = 4.0  # status, progress, log and chart in one refresh: each refresh costs the server a script run


@st.cache_data(max_entries=16, show_spinner=False)
def run_facts(run_dir: str) -> tuple[str | None, str]:
    """The run's own record of how it was split and what its accuracy counts (run.json), read once per run, not on
    every refresh."""
    try:
        run = load_run(run_dir)
        return run.info["dataset"].get("split_source"), run.targets.accuracy_name
    except (OSError, RunBroken, FileNotFoundError, AttributeError):
        return None, "accuracy"


@st.cache_data(max_entries=16, show_spinner=False)
def run_classes(run_dir: str) -> list[str]:
    """The run's classes (run.json), in the order of its per-class figures."""
    try:
        return load_run(run_dir).info["classes"]
    except (OSError, RunBroken, FileNotFoundError):
        return []


def live() -> None:
    job = jobs.current()
    if job is None:
        return
    s = job.snapshot()
    if not s.active and st.session_state.get("seen_active") == s.id:
        st.session_state.seen_active = None
        st.rerun(scope="app")  # the job ended: show the form again
    if s.active:
        st.session_state.seen_active = s.id
    st.subheader(f"Job {s.id}: {s.status_text}" + (f" ({plain(s.run_name)})" if s.run_name else ""))
    split, accuracy_name = run_facts(s.run_dir) if s.run_dir else (None, "accuracy")  # known once the run has scanned its data
    st.caption(f"Dataset {plain(dataset_label(s.dataset))}" + (f" ({describe_split(split)})" if split else "")
               + f", {s.config.backbone}, {s.config.strategy}, on {s.device}")
    if s.active and not s.in_training_phase and s.progress[1]:
        st.progress(s.phase_fraction, text=s.progress_text)
    else:
        st.progress(s.fraction_done, text=s.progress_text)
    if s.error:
        st.error(s.error)
        st.info(f"Suggestion: {plain(s.suggestion)}")
    if s.history:
        m = st.columns(4)
        m[0].metric(f"Best val {accuracy_name}", percent(s.best.val_acc), f"epoch {s.best.epoch}", delta_color="off", delta_arrow="off")
        balanced_metric(m[1], s.best, run_classes(s.run_dir) if s.run_dir else [])
        m[2].metric("Last val loss", loss(s.history[-1].val_loss))
        m[3].metric("Elapsed", seconds(s.elapsed))
    job_controls(job, s)
    with st.expander("Log", expanded=s.status in ("failed", "interrupted")):
        st.code("\n".join(s.log[-40:]) or "...", language=None)


def curves() -> None:
    """The live chart, redrawn only when a step or an epoch was added: building a figure is most of a refresh's work."""
    job = jobs.current()
    if job is None:
        return
    s = job.snapshot()
    version = (s.id, len(s.step_losses), len(s.history), s.status)
    last = st.session_state.get("live_curves_figure")
    fig = last[1] if last and last[0] == version else training_curves(s.history, s.step_losses, s.epochs)
    st.session_state.live_curves_figure = (version, fig)
    if fig:
        st.plotly_chart(fig, key="live_curves")
    elif s.active:
        st.caption("The loss and accuracy curves appear with the first training step.")
    elif s.status != "failed":
        st.caption("This job ended before its first training step: there is no curve to draw.")


def balanced_metric(col, best: EpochRow, classes: list[str]) -> None:
    """The best epoch's balanced accuracy beside its accuracy, its per-class recall in the help: with imbalanced
    classes accuracy can stay high while a small class is never recognised."""
    if best.val_balanced_acc is None:
        col.metric("Balanced accuracy", "-")
        return
    recalls = ", ".join(f"{c} {percent(r)}" for c, r in zip(classes, best.val_recall or []) if r is not None)
    col.metric("Balanced accuracy", percent(best.val_balanced_acc), f"epoch {best.epoch}", delta_color="off",
               delta_arrow="off", help=f"Mean of the per-class recall on validation: {plain(recalls)}")


def job_controls(job: Job, s: JobSnapshot) -> None:
    """Stop (a clean request, honoured within a step), Kill once a stop went unanswered, Resume what can go on."""
    if s.status in ("starting", "running") and st.button("Stop", key="train_stop"):
        jobs.stop(job)
        st.rerun(scope="fragment")
    elif s.status == "stopping" and s.stop_requested:
        st.caption(f"Stop requested {seconds(s.elapsed_since_stop)} ago; the run ends after the current step."
                   + ("" if s.can_kill else f" If it does not, Kill is offered after {seconds(KILL_GRACE_S)}."))
        if s.can_kill and st.button("Kill", key="train_kill", type="primary",
                                    help="End the training process at once; the run keeps its finished epochs"):
            jobs.kill(job)
            st.rerun(scope="fragment")
    elif s.resumable and st.button("Resume this run", key="job_resume", disabled=jobs.active() is not None):
        try:
            jobs.start(s.dataset, s.config, resume_dir=s.run_dir, workers=s.workers)
            st.rerun(scope="app")
        except (JobBusy, ValueError) as err:
            st.error(plain(err))


active = jobs.active() is not None
if active:
    st.info("A training job is running. It continues if you close or refresh this page.")
    with st.expander("Settings for the next run"):
        settings_form()  # starting here while the job runs gets a clear "busy" answer
else:
    settings_form()


def watch() -> None:
    """The job as it runs, one fragment: two timers (or three with the sidebar's) cost twice the script runs."""
    live()
    curves()


st.fragment(watch, run_every=WATCH_EVERY_S if active else None)()

st.subheader("Run history")
runs = list_runs(paths.runs_dir())
if not runs:
    st.caption("No runs yet.")
else:
    table = pd.DataFrame(history_rows(runs[:50]))
    for column in ("best val acc", "balanced acc"):
        if column in table:
            table[column] = table[column].map(points)
    picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="multi-row", key="run_table",
                          column_config={"best val acc": st.column_config.NumberColumn(
                              "val acc (best checkpoint)", format=TABLE_PERCENT,
                              help="Validation accuracy of the best checkpoint; 'measured' says whether by the predictor "
                                   "(the figure `evaluate` and the Predict page give) or while training"),
                                         "balanced acc": st.column_config.NumberColumn(
                              "balanced acc", format=TABLE_PERCENT,
                              help="Mean per-class recall of the best checkpoint on validation (measured while training): "
                                   "accuracy as if every class were equally common"),
                                         "seconds": st.column_config.NumberColumn("time", format=TABLE_SECONDS)})
    chosen = [runs[i] for i in picked.selection.rows] if picked and picked.selection.rows else runs[:1]
    fig = history_chart([(r.id, [] if r.broken else r.metrics()) for r in chosen])
    if fig:
        st.plotly_chart(fig, key="history_chart")
    else:
        st.caption(f"{plain(', '.join(r.id for r in chosen))}: no finished epoch, so no curve (select other runs above to compare).")

    st.markdown("**Manage a run**")
    a, b, c = st.columns([3, 1, 2])
    target_id = a.selectbox("Run", [r.id for r in runs[:50]], key=f"manage_run_{runs[0].id}")  # a new run: it is the default
    target = next(r for r in runs if r.id == target_id)
    status = RunStatus.BROKEN if target.broken else target.summary.get("status")
    resumable = status in (RunStatus.STOPPED, RunStatus.INTERRUPTED, RunStatus.FAILED)
    if b.button("Resume", key="run_resume", disabled=not resumable or active,
                help="Continue a stopped, interrupted or failed run from its last finished epoch"):
        try:
            jobs.start(DatasetSpec(**{k: v for k, v in target.info["dataset"].items() if k in DatasetSpec.__dataclass_fields__}),
                       TrainConfig.from_dict(target.info["config"]), resume_dir=str(target.dir))
            st.rerun()
        except (JobBusy, ValueError) as err:
            st.error(plain(err))
    sure = c.checkbox(f"Yes, delete {plain(target.id)}", key=f"run_delete_confirm_{target.id}",  # one run's, never the next's
                      disabled=status == RunStatus.RUNNING)
    if c.button("Delete", key="run_delete", disabled=not sure):
        try:
            delete_run(target)
            flash(f"Deleted {plain(target.id)}.")
            st.rerun()
        except RuntimeError as err:
            st.error(plain(err))
