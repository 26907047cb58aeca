import io

import pytest
from PIL import Image

from tl_core.config import TrainConfig
from tl_core.data.scan import load_dataset
from tl_core.train.trainer import train
from tl_core.use.export import export, load_export
from tl_core.use.predict import Predictor, evaluate


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, real_weights):
    import os

    old = os.environ["TORCH_HOME"]
    os.environ["TORCH_HOME"] = str(real_weights)
    try:
        return train("demo", TrainConfig(epochs=4), tmp_path_factory.mktemp("runs"))
    finally:
        os.environ["TORCH_HOME"] = old


def test_predict_files_pil_and_uploads_top_k(demo_run, tmp_path):
    ds = load_dataset("demo")
    stars = [s.path for s in ds.split("val") if ds.classes[s.label] == "star"][:4]
    p = Predictor.from_run(demo_run.run_dir)
    buf = io.BytesIO()
    Image.open(stars[0]).save(buf, "PNG")
    buf.seek(0)
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    preds = p.predict([*stars, Image.open(stars[1]), buf, str(bad)], top_k=3)
    assert len(preds) == 7 and preds[-1].error and not preds[-1].top
    for pr in preds[:-1]:
        probs = [v for _, v in pr.top]
        assert len(pr.top) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    assert sum(pr.top[0][0] == "star" for pr in preds[:4]) >= 3


def test_evaluate_reports_consistent_figures(demo_run):
    ev = evaluate(demo_run.run_dir)
    n = sum(map(sum, ev.confusion_matrix))
    assert n == len(ev.predictions) == 80
    assert ev.accuracy == pytest.approx(sum(ev.confusion_matrix[i][i] for i in range(5)) / n)
    assert ev.accuracy == pytest.approx(demo_run.best_val_accuracy, abs=0.05)
    assert [c["class"] for c in ev.per_class] == ev.classes and all(0 <= c["f1"] <= 1 for c in ev.per_class)
    conf = [m["confidence"] for m in ev.mistakes]
    assert conf == sorted(conf, reverse=True) and all(m["true"] != m["predicted"] for m in ev.mistakes)
    if ev.mistakes:
        m = ev.mistakes[0]
        assert m in ev.cell(m["true"], m["predicted"])


def test_export_is_checked_and_reloads_to_the_same_predictions(demo_run, tmp_path):
    path = export(demo_run.run_dir, tmp_path / "model.zip")
    ds = load_dataset("demo")
    files = [s.path for s in ds.split("val")[:6]]
    a = Predictor.from_run(demo_run.run_dir).predict(files)
    b = load_export(path).predict(files)
    assert [x.top[0][0] for x in a] == [x.top[0][0] for x in b]
    assert [x.top[0][1] for x in a] == pytest.approx([x.top[0][1] for x in b], abs=1e-4)
