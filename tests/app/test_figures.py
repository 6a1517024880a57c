import numpy as np

from app import figures


def test_figure_data_exports_points_cells_and_links():
    bars = figures.width_bars([4, 8], [2, 5], ["a", "b"])
    data = figures.figure_data(bars)
    assert data[data["trace"] == "after"]["y"].tolist() == [2, 5]
    heat = figures.path_heatmap(np.array([[0.2, 0.8], [0.6, 0.4]]), np.array([1, 0]))
    cells = figures.figure_data(heat)
    assert len(cells[cells["trace"] == "heatmap"]) == 4 and cells["value"].max() == 0.8
    flows = figures.figure_data(figures.sankey(["a", "b", "c"], [0, 0], [1, 2], [3, 4], title=""))
    assert flows[["source", "target", "value"]].values.tolist() == [["a", "b", 3], ["a", "c", 4]]


def test_large_maps_are_thinned_proportionally_and_say_so():
    import numpy as np
    import pandas as pd

    from app.figures import thin_points

    rng = np.random.default_rng(0)
    kinds = ["clean"] * 50_000 + ["pgd"] * 3_000 + ["fgsm"] * 9_000
    points = pd.DataFrame({"kind": kinds, "source": np.arange(len(kinds)), "x": rng.normal(size=len(kinds))})
    small, note = thin_points(points.iloc[:5000])
    assert note is None and len(small) == 5000
    thinned, note = thin_points(points, 12_000)
    counts = thinned["kind"].value_counts()
    assert len(thinned) == 12_000 and counts["pgd"] == 3_000  # the rarest kind is kept whole
    assert counts["fgsm"] == 4_500 and counts["clean"] == 4_500  # the rest share what is left
    assert thinned["source"].is_monotonic_increasing and not thinned["source"].duplicated().any()
    assert "Showing 12,000 of 62,000 points" in note and "clean 4,500 of 50,000" in note


def test_the_map_colours_classes_categorically_with_a_named_legend():
    import pandas as pd

    names = ["plane", "car", "bird"]
    points = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "y": [0.0, 1.0, 0.0, 1.0], "kind": ["clean", "clean", "pgd", "pgd"],
                           "source": [0, 1, 0, 1], "label": [0, 2, 0, 1], "pred": [0, 2, 1, 1]})
    fig = figures.decision_map(points, names)
    data, legend = fig.data[0], fig.data[1:]
    colours = list(data.marker.color)
    assert colours[0] == colours[2] != colours[1] != colours[3] != colours[0]  # same class, same colour
    assert data.marker.colorbar.title.text is None  # no continuous colour bar
    assert [t.name for t in legend] == names + ["clean", "pgd"]
    assert [t.marker.color for t in legend[:3]] == [colours[0], colours[3], colours[1]]
    # one point without a position: drawn in the legend (plotly.js omits traces without points), never selectable
    assert all(list(t.x) == [None] and list(t.y) == [None] for t in legend)


def test_attribution_image_is_red_for_positive_blue_for_negative_and_blocky():
    attr = np.zeros((2, 2, 3))
    attr[0, 0, 0], attr[1, 0, 0] = 1.0, 1.0  # channels are summed: +2
    attr[0, 1, 2] = -2.0
    img = figures.attribution_image(attr, scale=4)
    assert img.shape == (8, 12, 3) and img.min() >= 0 and img.max() <= 1
    red, blue, white = img[0, 0], img[4, 8], img[0, 4]
    assert red[0] > red[2] and blue[2] > blue[0] and np.allclose(white, 1)
    assert np.allclose(img[:4, :4], red)  # each input pixel is one 4 x 4 block


def test_box_statistics_are_the_numbers_plotly_draws_from_raw_points():
    from app.health_figures import box_statistics

    values = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 100.0])  # 100 lies beyond q3 + 1.5 IQR
    stats = box_statistics(values)
    assert stats["median"] == [5.5] and stats["q1"] == [3.25] and stats["q3"] == [7.75]
    assert stats["lowerfence"] == [1.0] and stats["upperfence"] == [9.0]  # the whisker stops at the last inlier
    assert stats["mean"] == [14.5]


def test_the_cost_histogram_sends_bins_that_count_every_input():
    ratios = np.random.default_rng(0).uniform(0.2, 0.8, size=10_000)
    bars = figures.macs_histogram(ratios).data[0]
    assert len(bars.x) == 40 and int(np.sum(bars.y)) == 10_000
    assert np.isclose(bars.customdata[0][0], ratios.min()) and np.isclose(bars.customdata[-1][1], ratios.max())


def test_layer_costs_add_up_to_the_ungated_network_and_mark_gated_layers():
    from conftest import DEFAULT_RUN
    from models import cost_model, load_run

    run = load_run(DEFAULT_RUN)
    costs = cost_model(run.model, tuple(run.meta.input_shape))
    fig = figures.layer_costs(costs.layers)
    bars = {trace.name: dict(zip(trace.x, trace.y)) for trace in fig.data}
    assert np.isclose(sum(sum(b.values()) for b in bars.values()), costs.ungated_macs / 1e6)
    gated = {layer.name for layer in costs.layers if layer.in_gate is not None or layer.out_gate is not None}
    assert set(bars["gated layers"]) == gated and gated  # the shipped model has gated layers
    assert list(fig.layout.xaxis.categoryarray) == [layer.name for layer in costs.layers]


def test_precomputed_boxes_export_their_statistics():
    import plotly.graph_objects as go

    from app.health_figures import box_statistics

    values = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 100.0])
    data = figures.figure_data(go.Figure(go.Box(x=["gate 0"], **box_statistics(values), name="gate 0")))
    assert data.to_dict("records") == [{"trace": "gate 0", "x": "gate 0", "lowerfence": 1.0, "q1": 3.25,
                                        "median": 5.5, "q3": 7.75, "upperfence": 9.0, "mean": 14.5}]
