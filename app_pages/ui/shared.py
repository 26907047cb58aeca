"""What every page shares: the sidebar the frame draws, the one JobManager of this server process, cached engine
calls, and this browser session's choices.

`streamlit_app.py` is the frame: it declares the pages with `st.navigation` and draws the sign-in gate, the sidebar
and the title before running a page. Modules in `app_pages/ui/` are not pages. Logic lives in tl_core; this module
only caches and renders.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import streamlit as st

from tl_core import paths
from tl_core.dashboard import prefs
from tl_core.dashboard.prefs import Choices
from tl_core.data.scan import ScanReport, scan
from tl_core.data.sources import DEMO_LABELS, DatasetSpec
from tl_core.devices import describe_device, pick_device
from tl_core.formats import percent
from tl_core.jobs.manager import JobManager
from tl_core.measure import speed
from tl_core.models import backbones
from tl_core.train.runs import list_runs

FLASH_RUNS = 3


def flash(message: str) -> None:
    """A message for the next runs of this page: kept for a few script runs, so a second rerun right after the
    action (a widget committing its value) cannot swallow it."""
    st.session_state.flash = {"message": message, "page": None, "left": FLASH_RUNS}


def show_flash(page: str) -> None:
    f = st.session_state.get("flash")
    if not f:
        return
    f["page"] = f["page"] or page  # it belongs to the page that shows it first
    if f["page"] != page:
        return
    st.success(f["message"])
    f["left"] -= 1
    if f["left"] <= 0:
        del st.session_state.flash


@st.cache_resource
def job_manager() -> JobManager:
    """One per server process: every tab and every refresh attaches to the same jobs."""
    return JobManager()


@st.cache_resource
def device_text() -> str:
    return describe_device(pick_device())


@st.cache_data(show_spinner=False, max_entries=8)
def scan_report(spec: DatasetSpec) -> ScanReport:
    """The one scan every page shows (usable images, the spec's split, problems); cached per spec."""
    bar = st.progress(0.0, text="Checking every image...")
    report = scan(spec, lambda d, n: bar.progress(d / max(n, 1), text=f"Checking images {d}/{n}"))
    bar.empty()
    return report


@st.cache_data(ttl=30, show_spinner=False)
def backbone_rows() -> list[backbones.BackboneInfo]:
    return backbones.list_backbones()


def speeds() -> dict[str, speed.Speed]:
    return speed.load_speeds(pick_device())


TAB_ID = re.compile(r"^[0-9a-f]{12}$")


def tab_id() -> str:
    """This browser tab's id, kept in its URL (`?tab=...`) so that a refresh finds the tab's own choices."""
    tab = st.query_params.get("tab")
    if not (isinstance(tab, str) and TAB_ID.match(tab)):
        tab = st.session_state.get("tab_id") or secrets.token_hex(6)
    if st.query_params.get("tab") != tab:
        st.query_params["tab"] = tab  # put back after a page switch dropped it
    st.session_state.tab_id = tab
    return tab


def choices() -> Choices:
    """This browser tab's dataset spec, backbone and run (the server's last choice is only a new tab's default)."""
    tab = tab_id()
    if "choices" not in st.session_state:
        st.session_state.choices = prefs.load(tab)
    return st.session_state.choices


def choose(message: str | None = None, **changes) -> None:
    """Change this tab's choices (the server default for new tabs too); rerun so every widget shows it at once."""
    st.session_state.choices = prefs.save(choices().with_changes(**changes), tab_id())
    if message:
        flash(message)
    st.rerun()


def chosen_backbone() -> str:
    return choices().backbone or backbones.recommend(backbone_rows())


def dataset_label(spec: DatasetSpec) -> str:
    """A dataset's name for people (never a server path): `demo`, `Flowers102`, `pets`, `x.zip`."""
    if spec.source == "demo":
        return "demo (shapes)"
    if spec.source == DEMO_LABELS:
        return "demo (shapes, several per picture)"
    return spec.source.split(":", 1)[1] if spec.source.startswith("torchvision:") else Path(spec.source).name


MARKDOWN_SPECIAL = frozenset("\\`*_{}[]()<>#+-.!|~:$")


def plain(name: object) -> str:
    """A user-controlled name (folder, class, dataset, file) as literal text inside Markdown: every character
    Markdown, Streamlit's `:colour[...]`/`:material/...:` directives or LaTeX could read is escaped, so a name such as
    `![x](http://host/p.png)` shows as typed and fetches nothing."""
    text = " ".join(str(name).split())  # no newline can start a heading or a list
    return "".join(f"\\{ch}" if ch in MARKDOWN_SPECIAL else ch for ch in text)


SIDEBAR_EVERY_S = 10.0  # the sidebar's job line: each refresh costs the server a script run; the Train page has its own


def sidebar() -> None:
    c = choices()
    with st.sidebar:
        st.caption("Dataset")
        st.markdown(f"**{plain(dataset_label(c.dataset))}**")
        st.caption("Backbone")
        st.markdown(f"**{plain(chosen_backbone())}**")
        st.caption("Training")
        st.fragment(job_status, run_every=SIDEBAR_EVERY_S if job_manager().active() else None)()
        st.caption(device_text())


def job_status() -> None:
    """The live or last run, refreshed on its own while a job runs."""
    job = job_manager().current()
    if job is None:
        last = next(iter(list_runs(paths.runs_dir())), None)
        st.markdown(f"last run: **{plain(last.id)}** ({last.summary.get('status')})" if last else "no runs yet")
        return
    s = job.snapshot()
    best = f", best val acc {percent(s.best.val_acc)}" if s.best else ""
    where = f"epoch {s.epoch}/{s.epochs}" if s.active else f"{len(s.history)} of {s.epochs} epochs finished"
    st.markdown(f"job {s.id} on {plain(dataset_label(s.dataset))}: **{s.status_text}**, {where}{best}")
