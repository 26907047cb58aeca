"""What every page shares: the one JobManager of this server process, cached engine calls, the sidebar.

Logic lives in tl_core; this module only caches and renders.
"""

from __future__ import annotations

import streamlit as st

from tl_core import backbones, paths, prefs, speed
from tl_core.datasets import ImageDataset, load_dataset
from tl_core.devices import describe_device, pick_device
from tl_core.jobs import JobManager
from tl_core.runs import list_runs
from tl_core.scan import ScanReport, scan


@st.cache_resource
def job_manager() -> JobManager:
    """One per server process: every tab and every refresh attaches to the same jobs."""
    return JobManager()


@st.cache_resource
def device_text() -> str:
    return describe_device(pick_device())


@st.cache_data(show_spinner="Reading the dataset...", max_entries=8)
def dataset(source: str, val_fraction: float, seed: int) -> ImageDataset:
    return load_dataset(source, val_fraction, seed)


@st.cache_data(show_spinner=False, max_entries=8)
def scan_report(source: str, val_fraction: float, seed: int) -> ScanReport:
    bar = st.progress(0.0, text="Checking every image...")
    report = scan(dataset(source, val_fraction, seed), lambda d, n: bar.progress(d / max(n, 1), text=f"Checking images {d}/{n}"))
    bar.empty()
    return report


@st.cache_data(ttl=30, show_spinner=False)
def backbone_rows() -> list[backbones.BackboneInfo]:
    return backbones.list_backbones()


def speeds() -> dict[str, speed.Speed]:
    return speed.load_speeds(pick_device())


def choices() -> dict:
    """Current dataset / backbone / run, shared by every page and kept across refreshes."""
    if "prefs" not in st.session_state:
        st.session_state.prefs = prefs.load()
    return st.session_state.prefs


def choose(**changes) -> None:
    st.session_state.prefs = prefs.save(**changes)


def chosen_backbone() -> str:
    return choices()["backbone"] or backbones.recommend(backbone_rows())


def sidebar() -> None:
    c = choices()
    with st.sidebar:
        st.caption("Dataset")
        st.markdown(f"**{c['dataset']}**")
        st.caption("Backbone")
        st.markdown(f"**{chosen_backbone()}**")
        job = job_manager().current()
        st.caption("Training")
        if job is None:
            last = next(iter(list_runs(paths.runs_dir())), None)
            st.markdown(f"last run: **{last.id}** ({last.summary.get('status')})" if last else "no runs yet")
        else:
            s = job.snapshot()
            best = max((h["val_acc"] for h in s["history"]), default=None)
            st.markdown(f"job {s['id']}: **{s['status']}**, epoch {s['epoch']}/{s['epochs']}"
                        + (f", best val acc {best:.3f}" if best is not None else ""))
        st.caption(device_text())
