"""The Dataset page through AppTest: the demo, server folders, uploads keyed by content, a dataset built
in the browser."""

from __future__ import annotations

import json

import streamlit as st
from helpers import ROOT, dataset_zip, solid
from streamlit.testing.v1 import AppTest


def test_dataset_page_keys_uploads_by_content(tmp_path, monkeypatch, home):
    tiny = tmp_path / "tiny"
    for c in ("u", "v"):
        for i in range(2):
            solid(tiny / c / f"{i}.png", (90 * i, 20, 40))
    (home / "prefs.json").write_text(json.dumps({"dataset": str(tiny)}))
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("pages/1_Dataset.py").run()
    at.radio(key="dataset_kind").set_value("Upload a .zip").run()
    for classes in (["a", "b"], ["a", "b", "c"]):  # the same file name, new bytes
        at.file_uploader(key="zip_upload").set_value(("data.zip", dataset_zip(classes), "application/zip")).run()
        at.button(key="use_zip").click().run()
        assert not at.exception, at.exception
        assert {m.label: m.value for m in at.metric}["Classes"] == str(len(classes))
