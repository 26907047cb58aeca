import stat
import zipfile

import pytest
from conftest import solid

from tl_core.data.sources import DatasetError, DatasetSpec, from_folder, load_dataset, safe_extract


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


def test_demo_dataset_is_deterministic_and_non_trivial(tmp_path):
    from tl_core.data.demo import CLASSES, build, demo_root

    ds = load_dataset("demo")
    assert ds.classes == sorted(CLASSES) and len(ds.split("train")) >= 250 and len(ds.split("val")) >= 50
    again = build(tmp_path / "again")
    first = sorted((demo_root() / "train" / "star").iterdir())[0]
    assert (again / "train" / "star" / first.name).read_bytes() == first.read_bytes()


def test_torchvision_dataset_offline_gives_a_clear_message():
    with pytest.raises(DatasetError, match="needs internet access"):
        load_dataset("torchvision:Flowers102")
    with pytest.raises(DatasetError, match="Unknown torchvision dataset"):
        load_dataset("torchvision:NotADataset")


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
