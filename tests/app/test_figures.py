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
