"""Train: settings, then a live view of the one background job (it survives refreshes and other tabs)."""

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from pages._shared import backbone_rows, choices, chosen_backbone, dataset, job_manager, page_setup, speeds
from tl_core import paths, speed
from tl_core.config import TrainConfig
from tl_core.datasets import DatasetError
from tl_core.devices import pick_device
from tl_core.jobs import JobBusy
from tl_core.runs import list_runs
from tl_core.speed import estimate_seconds

st.title("Train")
page_setup()
jobs = job_manager()
c = choices()
name = chosen_backbone()
info = next(r for r in backbone_rows() if r.name == name)


def curves(history: list[dict], title: str = "") -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    epochs = [h["epoch"] for h in history]
    for col, metric in enumerate(("loss", "acc"), start=1):
        for split, dash in (("train", "dot"), ("val", "solid")):
            fig.add_trace(go.Scatter(x=epochs, y=[h[f"{split}_{metric}"] for h in history], name=f"{split} {metric}",
                                     mode="lines+markers", line={"dash": dash}), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(height=340, title=title, margin={"t": 60})
    return fig


def settings_form() -> None:
    try:
        ds = dataset(c["dataset"], c["val_fraction"], c["seed"])
    except DatasetError as e:
        st.error(f"The chosen dataset cannot be used: {e}")
        return
    n_train, n_val = len(ds.split("train")), len(ds.split("val"))
    st.markdown(f"**{ds.name}**: {n_train} training and {n_val} validation images, {len(ds.classes)} classes. "
                f"Backbone **{name}** ({info.size_mb} MB, ImageNet acc@1 {info.acc1}).")
    scratch = False
    if not info.cached:
        cached = [r.name for r in backbone_rows() if r.cached]
        st.warning(f"{name}'s weights are not cached: starting will try to download them. Offline, put "
                   f"`{info.weight_file}` into `{paths.torch_checkpoints()}`. "
                   + (f"Cached now: {', '.join(cached)}." if cached else "No backbone's weights are cached yet."))
        scratch = st.checkbox("Train from scratch instead (no pretrained weights: far less accurate)", key="train_scratch")
    labels = {"features": "Feature extraction (frozen backbone, fastest)", "finetune": "Fine-tune the last K stages",
              "full": "Full fine-tune (backbone learns slowly, head fast)"}
    strategy = st.radio("Strategy", list(labels), format_func=labels.get, key="train_strategy")
    a, b, d, e = st.columns(4)
    epochs = a.number_input("Epochs", 1, 500, 10 if strategy == "features" else 5, key="train_epochs")
    batch = b.number_input("Batch size", 1, 1024, 32, key="train_batch")
    lr = d.number_input("Learning rate (head)", 1e-6, 1.0, 1e-3, format="%.5f", key="train_lr")
    stages = e.number_input("Stages to fine-tune (K)", 1, 20, 2, key="train_stages", disabled=strategy != "finetune")
    with st.expander("More settings"):
        a, b, d = st.columns(3)
        optimizer = a.selectbox("Optimizer", ["adamw", "sgd"], key="train_opt")
        schedule = b.selectbox("Schedule", ["cosine", "onecycle"], key="train_sched")
        augment = d.selectbox("Augmentation", ["light", "none", "strong"], key="train_aug")
        a, b, d = st.columns(3)
        patience = a.number_input("Early-stopping patience (0 = off)", 0, 100, 5, key="train_patience")
        label_smoothing = b.number_input("Label smoothing", 0.0, 0.5, 0.1, key="train_ls")
        weight_decay = d.number_input("Weight decay", 0.0, 1.0, 1e-4, format="%.5f", key="train_wd")
        a, b, d = st.columns(3)
        image_size = a.number_input("Image size (0 = the weights' own)", 0, 1024, 0, key="train_size")
        seed = b.number_input("Seed", 0, 100_000, 0, key="train_seed")
        amp = d.checkbox("Mixed precision", True, key="train_amp")
    config = TrainConfig(backbone=name, pretrained=not scratch, strategy=strategy, finetune_stages=int(stages),
                         epochs=int(epochs), batch_size=int(batch), lr=float(lr), optimizer=optimizer, schedule=schedule,
                         augment=augment, patience=int(patience), label_smoothing=float(label_smoothing),
                         weight_decay=float(weight_decay), image_size=int(image_size) or None, seed=int(seed), amp=amp,
                         val_fraction=float(c["val_fraction"]))
    seconds = estimate_seconds(speeds().get(name), n_train, n_val, strategy, int(epochs), config.feature_views)
    if seconds:
        st.caption(f"Estimated time: about {seconds:.0f} s (from {name}'s speed measured on this device).")
    elif st.button(f"Estimate the time (measures {name} here, a few seconds)", key="train_measure"):
        with st.spinner(f"Measuring {name}..."):
            speed.measure(name, pick_device(config.device))
        st.rerun()
    if st.button("Start training", type="primary", key="train_start"):
        try:
            jobs.start(c["dataset"], config.validate())
            st.rerun()
        except JobBusy as err:
            st.warning(f"Busy: {err}")
        except ValueError as err:
            st.error(str(err))


def live() -> None:
    job = jobs.current()
    if job is None:
        return
    s = job.snapshot()
    if s["status"] not in ("starting", "running", "stopping") and st.session_state.get("seen_active") == s["id"]:
        st.session_state.seen_active = None
        st.rerun(scope="app")  # the job ended: show the form again
    if s["status"] in ("starting", "running", "stopping"):
        st.session_state.seen_active = s["id"]
    st.subheader(f"Job {s['id']}: {s['status']}" + (f" ({Path(s['run_dir']).name})" if s["run_dir"] else ""))
    if s["phase"] != "training" and s["progress"][1] and s["status"] in ("running", "starting", "stopping"):
        done, total = s["progress"]
        st.progress(min(1.0, done / total), text=f"{s['phase']}: {done}/{total}")
    else:
        step, steps = s["step"]
        frac = ((max(s["epoch"], 1) - 1) + (step / steps if steps else 0)) / s["epochs"]
        if s["status"] in ("finished", "stopped", "failed"):
            frac = min(1.0, len(s["history"]) / s["epochs"])
        eta = f", ETA {s['eta']:.0f}s" if s["eta"] else ""
        st.progress(min(1.0, frac), text=f"epoch {s['epoch']}/{s['epochs']}, step {step}/{steps}, "
                                         f"{s['images_per_s']:.0f} images/s{eta}")
    if s["error"]:
        st.error(s["error"])
        st.info(f"Suggestion: {s['suggestion']}")
    if s["history"]:
        best = max(s["history"], key=lambda h: h["val_acc"])
        m = st.columns(3)
        m[0].metric("Best val accuracy", f"{best['val_acc']:.3f}", f"epoch {best['epoch']}")
        m[1].metric("Last val loss", f"{s['history'][-1]['val_loss']:.3f}")
        m[2].metric("Elapsed", f"{s['elapsed']:.0f} s")
        st.plotly_chart(curves(s["history"]), key="live_curves")
    if s["status"] in ("starting", "running"):
        if st.button("Stop", key="train_stop"):
            jobs.stop(job)
            st.rerun(scope="fragment")
    with st.expander("Log", expanded=s["status"] == "failed"):
        st.code("\n".join(s["log"][-40:]) or "...", language=None)


active = jobs.active() is not None
if active:
    st.info("A training job is running. It continues if you close or refresh this page.")
    with st.expander("Settings for the next run"):
        settings_form()  # starting here while the job runs gets a clear "busy" answer
else:
    settings_form()
st.fragment(live, run_every=1.5 if active else None)()

st.subheader("Run history")
runs = list_runs(paths.runs_dir())
if not runs:
    st.caption("No runs yet.")
else:
    table = pd.DataFrame([{
        "run": r.id, "status": r.summary.get("status"), "best val acc": r.summary.get("best_val_accuracy"),
        "epochs": r.summary.get("epochs_completed"), "backbone": r.info["config"]["backbone"],
        "strategy": r.info["config"]["strategy"], "lr": r.info["config"]["lr"], "batch": r.info["config"]["batch_size"],
        "dataset": r.info["dataset"]["name"], "seconds": round(r.summary.get("seconds") or 0, 1)} for r in runs[:50]])
    picked = st.dataframe(table, hide_index=True, on_select="rerun", selection_mode="multi-row", key="run_table")
    chosen = [runs[i] for i in picked.selection.rows] if picked and picked.selection.rows else runs[:1]
    fig = go.Figure()
    for r in chosen:
        rows = r.metrics()
        fig.add_trace(go.Scatter(x=[m["epoch"] for m in rows], y=[m["val_acc"] for m in rows], name=r.id, mode="lines+markers"))
    fig.update_layout(title="Validation accuracy (select rows above to compare runs)", xaxis_title="epoch",
                      yaxis_title="val accuracy", height=320)
    st.plotly_chart(fig, key="history_chart")
