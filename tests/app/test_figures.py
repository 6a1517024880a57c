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
