"""The Backbones page through AppTest: the table, its filters, the choice and measuring on this device."""

from __future__ import annotations

from helpers import open_page

from tl_core.formats import NOT_MEASURED


def test_backbones_page_table_filters_and_choice(ui):
    at = open_page("app_pages/2_Backbones.py")
    table = at.dataframe[0].value
    assert len(table) > 20 and {"acc1", "ms_per_image", "cached"} <= set(table.columns)
    assert "Recommended" in at.success[0].value
    assert at.selectbox(key="cmp_fit").options == ["crop", "letterbox"]  # compare embeds as the Train page's choice says
    at.multiselect(key="bb_family").set_value(["resnet"]).run()
    assert set(at.dataframe[0].value.family) == {"resnet"}
    at.multiselect(key="bb_family").set_value(["mobilenetv2"]).run()
    assert at.button(key="bb_measure").label == "Measure on this device (1 backbone)"
    at.multiselect(key="cmp_names").set_value(["mobilenet_v2"]).run()
    assert at.button(key="cmp_run").label == "Compare 1 backbone on this dataset"
    at.multiselect(key="bb_family").set_value([]).run()
    at.checkbox(key="bb_cached").check().run()  # no weight file on this machine: a sentence, not an empty table
    assert not at.dataframe and any("Offline weights only" in i.value for i in at.info)
    at.checkbox(key="bb_cached").uncheck().run()
    at.selectbox(key="bb_pick").set_value("mobilenet_v3_small").run()
    at.button(key="bb_use").click().run()
    assert any("mobilenet_v3_small selected" in s.value for s in at.success)
    assert any(m.value == r"**mobilenet\_v3\_small**" for m in at.sidebar.markdown)


def test_backbones_page_measures_on_this_device(ui):
    at = open_page("app_pages/2_Backbones.py")
    at.multiselect(key="bb_family").set_value(["mobilenetv3"]).run()
    table = at.dataframe[0].value
    assert (table.ms_per_image == NOT_MEASURED).all() and (table.images_per_s == NOT_MEASURED).all()  # not "None"
    at.button(key="bb_measure").click().run()
    table = at.dataframe[0].value
    assert set(table.name) == {"mobilenet_v3_small", "mobilenet_v3_large"} and (table.ms_per_image.astype(float) > 0).all()
    assert at.get("plotly_chart")  # accuracy against measured latency


def test_backbones_scatter_keeps_every_backbone_after_one_is_measured(ui):
    import json

    from tl_core.measure import speed

    speed.measure("mobilenet_v3_small", batch=2, size=64, train_batch=2)  # one measured, its sibling not
    at = open_page("app_pages/2_Backbones.py")
    at.multiselect(key="bb_family").set_value(["mobilenetv3"]).run()
    table = at.dataframe[0].value
    shown = len(table)
    cells = {str(v) for v in table.to_numpy().ravel()}
    assert not cells & {"None", "nan", "NaN", "<NA>"}  # one mark for a speed not measured, the same as the CLI's
    assert set(table[table.name != "mobilenet_v3_small"].ms_per_image) == {NOT_MEASURED}
    assert float(table[table.name == "mobilenet_v3_small"].ms_per_image.iloc[0]) > 0
    spec = json.loads(next(c for c in at.get("plotly_chart") if "GFLOPs" in c.proto.spec).proto.spec)
    points = sum(len(trace["hovertext"]) for trace in spec["data"])  # one name per point (x is binary-encoded)
    assert points == shown  # measured and unmeasured alike
    assert {t["name"].split(", ")[-1] for t in spec["data"]} == {"measured here", "not measured yet"}
