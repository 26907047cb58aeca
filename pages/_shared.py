"""What every page shares: the one JobManager of this server process, cached engine calls, the sidebar.

Logic lives in tl_core; this module only caches and renders.
"""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

from tl_core import backbones, paths, prefs, speed
from tl_core.datasets import ImageDataset, load_dataset
from tl_core.devices import describe_device, pick_device
from tl_core.jobs import JobManager
from tl_core.runs import list_runs
from tl_core.scan import ScanReport, scan


def use_router() -> None:
    """Make st.navigation's page list the only one a browser sees.

    On the first run after the server starts, Streamlit treats an existing pages/ folder as automatic
    (v1) pages: every pages/*.py, this module included, is listed and the entrypoint is called
    "streamlit app". Turning that off and rerunning once routes every later run through st.navigation.
    """
    first_run = not st.session_state.get("routed")
    st.session_state.routed = True
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        if first_run:
            st.rerun()


def page_setup() -> None:
    """Called first by every page: routing, the shared sidebar, and the message a choice left behind."""
    use_router()
    sidebar()
    if message := st.session_state.pop("flash", None):
        st.success(message)


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


def choose(message: str | None = None, **changes) -> None:
    """Store a choice for every page (and the next refresh); rerun so the sidebar shows it at once."""
    st.session_state.prefs = prefs.save(**changes)
    if message:
        st.session_state.flash = message
    st.rerun()


def chosen_backbone() -> str:
    return choices()["backbone"] or backbones.recommend(backbone_rows())


def sidebar() -> None:
    c = choices()
    with st.sidebar:
        st.caption("Dataset")
        st.markdown(f"**{c['dataset']}**")
        st.caption("Backbone")
        st.markdown(f"**{chosen_backbone()}**")
        st.caption("Training")
        st.fragment(job_status, run_every=2 if job_manager().active() else None)()
        st.caption(device_text())


def job_status() -> None:
    """The live or last run, refreshed on its own while a job runs."""
    job = job_manager().current()
    if job is None:
        last = next(iter(list_runs(paths.runs_dir())), None)
        st.markdown(f"last run: **{last.id}** ({last.summary.get('status')})" if last else "no runs yet")
        return
    s = job.snapshot()
    best = max((h["val_acc"] for h in s["history"]), default=None)
    st.markdown(f"job {s['id']}: **{s['status']}**, epoch {s['epoch']}/{s['epochs']}"
                + (f", best val acc {best:.3f}" if best is not None else ""))
