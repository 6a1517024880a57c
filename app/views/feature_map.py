"""Decision-feature map: UMAP of clean and attacked inputs' decision features, with selection."""

import numpy as np
import pandas as pd
import streamlit as st

from analysis import NonFiniteError
from analysis.analyze import map_reading_scores, umap_points
from app import figures
from app.widgets import chart
from app.jobs_panel import require_analysis
from app.state import get_analysis_table, sidebar

run, _ = sidebar()
sha, path = run.meta.weights_sha256, str(run.path)
st.title("Decision-feature map")
require_analysis(run, stored=get_analysis_table(path, sha, "clean", "rows") is not None,
                 what="the map of decision features of clean and attacked inputs")

cols = st.columns(3)
neighbors = cols[0].number_input("UMAP neighbours", 2, 200, 15, key="umap_neighbors")
min_dist = cols[1].number_input("UMAP min. distance", 0.0, 1.0, 0.1, 0.05, key="umap_min_dist")


@st.cache_data(show_spinner="Fitting UMAP on the clean inputs (seconds)...", max_entries=8)
def points(path: str, sha: str, neighbors: int, min_dist: float) -> pd.DataFrame:
    from app.state import get_run

    return umap_points(get_run(path), neighbors=neighbors, min_dist=min_dist, log=lambda s: None)


@st.cache_data(show_spinner=False, max_entries=4)
def detector_scores(path: str, sha: str) -> dict:
    from app.state import get_run

    return map_reading_scores(get_run(path))


def image_of(path: str, sha: str, kind: str, source: int, row: int) -> np.ndarray:
    """(H, W, C) image of a clean input or of a stored adversarial one."""
    from app.state import get_analysis_array, get_run, split_tensors

    if kind == "clean":
        images, _, _ = split_tensors(get_run(path), "test")
        return images[source].permute(1, 2, 0).numpy()
    return get_analysis_array(path, sha, f"attack-{kind}", "x_adv")[row].transpose(1, 2, 0)  # read once, cached


def path_of(path: str, sha: str, kind: str, row: int) -> str:
    table = get_analysis_table(path, sha, "clean" if kind == "clean" else f"attack-{kind}", "rows")
    return "-".join(str(table.iloc[row][c]) for c in table.columns if c.startswith("path_"))


try:
    table = points(path, sha, int(neighbors), float(min_dist))
except NonFiniteError as e:
    st.error(f"The map is not drawn: {e}. Recompute the analysis with `gatescope analyze {run.path} --force`.")
    st.stop()
kinds = list(dict.fromkeys(table["kind"]))
shown = cols[2].multiselect("Show", kinds, default=kinds, key="umap_kinds")
view, thinned = figures.thin_points(table[table["kind"].isin(shown)].reset_index(drop=True))
if thinned:
    st.info(thinned)
st.caption("Fitted on clean inputs; attacked inputs (successful attacks only) are transformed into it. "
           "Colour: true class; marker: clean or attack. Draw a lasso or a box to inspect points.")
event = chart(st, figures.decision_map(view, run.meta.class_names), key="umap", on_select="rerun",
                        selection_mode=("lasso", "box"))
selected = view.iloc[list(event.selection.point_indices)] if event and event.selection else view.iloc[:0]
if len(selected):
    st.subheader(f"{len(selected)} selected")
    scores = detector_scores(path, sha)
    shown = selected.head(12)
    st.image([image_of(path, sha, row.kind, int(row.source), int(row.row)) for row in shown.itertuples()], width=56,
             caption=[f"{r.kind} #{r.source}: {r.label}->{r.pred}" for r in shown.itertuples()])
    open_cols = st.columns([2, 1])
    point = open_cols[0].selectbox(
        "Open a selected point on Decision paths", range(len(selected)), key="open_point",
        format_func=lambda i: f"{selected.iloc[i].kind} #{selected.iloc[i].source} "
                              f"({selected.iloc[i].label} -> {selected.iloc[i].pred})")
    chosen = selected.iloc[point]
    link = {"run": path, "split": "test", "pick": "by index", "index": int(chosen.source),
            "stored": chosen.kind != "clean"}  # an attacked point opens the exact input the analysis stored
    if chosen.kind != "clean":
        link["attack"] = chosen.kind
    open_cols[1].page_link("views/paths.py", label=f"Open {chosen.kind} #{chosen.source} on Decision paths",
                           query_params=link)
    details = selected[["kind", "source", "label", "pred"]].copy()
    details["detector score"] = [scores.get((r.kind, int(r.row)), float("nan")) for r in selected.itertuples()]
    details["path"] = [path_of(path, sha, r.kind, int(r.row)) for r in selected.itertuples()]
    st.dataframe(details.head(500), hide_index=True,
                 column_config={"detector score": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0)})
