"""Datasets from folders, zips and uploads: splits, stratified random splits, and every hostile archive or file
refused or listed with one clear line, nothing extracted or read that should not be."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
import zipfile
from pathlib import Path

import pytest
import streamlit as st
from helpers import ROOT, dataset_zip, png_bytes, run_cli, solid, zip_bytes
from streamlit.testing.v1 import AppTest

from tl_core.data.images import BadImage, content_hash, open_rgb
from tl_core.data.scan import load_dataset, scan
from tl_core.data.sources import DatasetError, DatasetSpec, from_folder, from_zip, safe_extract, save_upload, uploads_dir


def test_split_folders_are_recognised_by_their_usual_names(tmp_path):
    for split in ("train", "validation"):
        for cls in ("cat", "dog"):
            for i in range(3):
                solid(tmp_path / "pets" / split / cls / f"{i}.png", (i * 40, 0, 0))
    ds = from_folder(tmp_path / "pets")
    assert ds.classes == ["cat", "dog"]
    assert ds.counts() == {"train": {"cat": 3, "dog": 3}, "val": {"cat": 3, "dog": 3}}
    assert ds.split_source == "folders"


def test_class_folders_are_split_stratified_and_reproducibly(shapes_folder):
    a = load_dataset(DatasetSpec(str(shapes_folder), val_fraction=0.3, split_seed=7))
    b = load_dataset(DatasetSpec(str(shapes_folder), val_fraction=0.3, split_seed=7))
    c = load_dataset(DatasetSpec(str(shapes_folder), val_fraction=0.3, split_seed=8))
    assert a.samples == b.samples and a.samples != c.samples
    counts = a.counts()
    assert counts["val"] == {"circle": 3, "square": 3, "triangle": 3}  # of usable images: broken.jpg is not counted
    assert counts["train"] == {"circle": 7, "square": 7, "triangle": 7}  # triangle: 10 usable + broken.jpg
    reasons = {p.path.rsplit("/", 1)[-1]: p.reason for p in a.skipped}
    assert reasons[".DS_Store"] == "hidden or system file"
    assert "not an image file" in reasons["notes.txt"] and "broken.jpg" in reasons


def test_a_folder_without_classes_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        from_folder(tmp_path / "empty")


def _zip(path, entries: dict[str, bytes], links: tuple[str, ...] = ()) -> str:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return str(path)


def test_zip_with_wrapper_folder_and_macos_junk_loads(tmp_path, shapes_folder):
    entries = {f"mydata/{p.relative_to(shapes_folder)}": p.read_bytes() for p in shapes_folder.rglob("*.png")}
    entries["__MACOSX/mydata/._circle"] = b"junk"
    ds = load_dataset(_zip(tmp_path / "mydata.zip", entries))
    assert ds.classes == ["circle", "square", "triangle"] and len(ds.samples) == 30
    fewer = {k: v for k, v in entries.items() if "/triangle/" not in k}
    again = load_dataset(_zip(tmp_path / "mydata.zip", fewer))  # same name, new content: extracted anew
    assert again.classes == ["circle", "square"]


@pytest.mark.parametrize("bad,match", [("../evil.png", "outside"), ("/abs/evil.png", "outside"), ("a/../../evil.png", "outside")])
def test_zip_paths_outside_the_target_are_refused(tmp_path, bad, match):
    archive = _zip(tmp_path / "slip.zip", {"ok/a.png": b"x", bad: b"x"})
    with pytest.raises(DatasetError, match=match):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.png").exists()


def test_zip_links_bombs_and_non_zips_are_refused(tmp_path):
    with pytest.raises(DatasetError, match="symbolic link"):
        safe_extract(_zip(tmp_path / "link.zip", {}, links=("a/link.png",)), tmp_path / "o1")
    with pytest.raises(DatasetError, match="zip bomb"):
        safe_extract(_zip(tmp_path / "bomb.zip", {"a/zeros.png": bytes(50 * 2**20)}), tmp_path / "o2")
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(DatasetError, match="not a valid .zip"):
        safe_extract(tmp_path / "fake.zip", tmp_path / "o3")


def test_torchvision_dataset_offline_gives_a_clear_message():
    with pytest.raises(DatasetError, match="needs internet access"):
        load_dataset("torchvision:Flowers102")
    with pytest.raises(DatasetError, match="Unknown torchvision dataset"):
        load_dataset("torchvision:NotADataset")


def finishes(fn, timeout: float = 10):
    """Run `fn` in a thread: (finished in time, its result or exception). A FIFO read naively blocks forever."""
    out: list = []

    def target():
        try:
            out.append(fn())
        except Exception as e:
            out.append(e)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), (out[0] if out else None)


def test_a_zip_bomb_is_refused_before_extracting_and_uploads_are_bounded(home, monkeypatch):
    bomb = zip_bytes({f"c{i % 2}/{i}.png": bytes(1 << 20) for i in range(20)})  # 20 MB of zeros in ~20 KB
    assert len(bomb) < 100_000
    saved = save_upload("bomb.zip", bomb)
    with pytest.raises(DatasetError, match="zip bomb"):
        from_zip(saved)
    assert list(uploads_dir().iterdir()) == []  # nothing extracted, the refused upload removed

    monkeypatch.setenv("TL_STUDIO_UPLOADS_GB", "1e-9")  # room for one upload only
    first = save_upload("a.zip", dataset_zip(["x", "y"]))
    assert from_zip(first).classes == ["x", "y"]
    second = save_upload("b.zip", dataset_zip(["p", "q"]))
    assert from_zip(second).classes == ["p", "q"]
    digest = second.parent.name  # the oldest upload is evicted with its extraction
    assert {p.name for p in uploads_dir().iterdir()} == {digest, f"b-{digest}"}


def test_links_out_of_the_root_and_special_files_are_listed_not_read(tmp_path):
    outside = tmp_path / "outside"
    solid(outside / "secret.png", (1, 2, 3))
    solid(outside / "cls" / "leak.png", (3, 2, 1))
    root = tmp_path / "data" / "ds"
    for c in ("cat", "dog"):
        for i in range(3):
            solid(root / c / f"{i}.png", (60 * i, 30, 90))
    (root / "dog" / "secret.png").symlink_to(outside / "secret.png")
    (root / "evil").symlink_to(outside / "cls", target_is_directory=True)
    os.mkfifo(root / "cat" / "pipe.png")

    done, ds = finishes(lambda: from_folder(root))
    assert done and not isinstance(ds, Exception), ds
    assert len(ds.samples) == 6 and all(Path(s.path).resolve().is_relative_to(root.resolve()) for s in ds.samples)
    reasons = {Path(p.path).name: p.reason for p in ds.skipped}
    assert "links outside the dataset folder" in reasons["secret.png"]
    assert "links outside the dataset folder" in reasons["evil"]
    assert reasons["pipe.png"] == "not a regular file (a FIFO)"
    assert finishes(lambda: scan(DatasetSpec(str(root))))[0]
    for fn in (content_hash, open_rgb):
        done, result = finishes(lambda fn=fn: fn(root / "cat" / "pipe.png"))
        assert done and isinstance(result, BadImage) and "not a regular file" in str(result)


def encrypted_zip() -> bytes:
    """zipfile cannot encrypt, but the flag bit is all a reader sees before asking for the password."""
    data = bytearray(zip_bytes({"a/0.png": png_bytes(), "b/0.png": png_bytes((0, 0, 255))}))
    local = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo("b/0.png").header_offset
    central = data.rindex(b"PK\x01\x02")  # the last central-directory entry: b/0.png
    for flag_at in (local + 6, central + 8):
        data[flag_at] |= 0x1
    return bytes(data)


def bad_crc_zip() -> bytes:
    data = zip_bytes({"a/0.png": png_bytes(), "b/0.txt": b"hello-data" * 10}, zipfile.ZIP_STORED)
    return data.replace(b"hello-data", b"jello-data", 1)


def clash_zip() -> bytes:
    return zip_bytes({"a/0.png": png_bytes(), "b": b"a file", "b/0.png": png_bytes((0, 0, 255))})


BAD_ZIPS = {"password-protected": encrypted_zip, "damaged": bad_crc_zip, "both a file and a folder": clash_zip}


def test_encrypted_damaged_and_clashing_zips_are_one_clear_line(home, tmp_path, capsys, monkeypatch):
    for words, make in BAD_ZIPS.items():
        archive = tmp_path / "data.zip"
        archive.write_bytes(make())
        with pytest.raises(DatasetError, match=words):
            from_zip(archive)
        assert not uploads_dir().exists() or not any(uploads_dir().iterdir())  # no partial extraction
        code, out, err = run_cli(capsys, "scan", str(archive))
        assert code == 1 and words in err and err.count("\n") == 1 and "Traceback" not in err

    (home / "prefs.json").write_text(json.dumps({"dataset": str(tmp_path / "none")}))
    monkeypatch.setenv("TL_STUDIO_RUNS", str(tmp_path / "runs"))
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120).run()
    at.switch_page("app_pages/1_Dataset.py").run()
    at.radio(key="dataset_kind").set_value("Upload a .zip").run()
    from app_pages.ui.shared import plain

    for words, make in BAD_ZIPS.items():  # the Dataset page: the same line, no traceback, nothing kept
        at.file_uploader(key="zip_upload").set_value(("data.zip", make(), "application/zip")).run()
        at.button(key="use_zip").click().run()
        assert not at.exception and any(plain(words) in e.value and "\n" not in e.value for e in at.error)  # as plain text
        assert not any(uploads_dir().iterdir())


def test_a_wrapper_whose_only_folder_links_outside_the_root_reads_nothing_outside(tmp_path):
    outside = tmp_path / "elsewhere"
    for cls in ("secret_a", "secret_b"):
        solid(outside / cls / "1.png", (9, 9, 9))
    wrapper = tmp_path / "data" / "wrapper"
    wrapper.mkdir(parents=True)
    (wrapper / "inner").symlink_to(outside, target_is_directory=True)
    ds = from_folder(wrapper)
    assert ds.root == str(wrapper.resolve())  # not opened up into the link's target
    assert not ds.samples and not any(str(outside) in s.path for s in ds.samples)
    assert any("links outside the dataset folder" in p.reason for p in ds.skipped)


def test_an_empty_zip_names_the_zip_not_a_server_path_and_leaves_nothing(tmp_path, monkeypatch):
    import io

    from tl_core.data.sources import from_zip, save_upload, uploads_dir

    monkeypatch.setenv("TL_STUDIO_HOME", str(tmp_path / "home"))
    buf = io.BytesIO()
    zipfile.ZipFile(buf, "w").close()
    archive = save_upload("empty.zip", buf.getvalue())
    with pytest.raises(DatasetError) as caught:
        from_zip(archive)
    assert str(caught.value).startswith("empty.zip") and str(tmp_path) not in str(caught.value)
    assert list(uploads_dir().iterdir()) == []
