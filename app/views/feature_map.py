"""Decision-feature map: UMAP of clean and attacked inputs' decision features, with selection."""

import pandas as pd
import streamlit as st

from analysis.analyze import umap_points
from app import figures
from app.state import get_analysis_table, sidebar

run, _ = sidebar()
sha, path = run.meta.weights_sha256, str(run.path)
st.title("Decision-feature map")
if get_analysis_table(path, sha, "clean", "rows") is None:
    st.info(f"No decision features stored for this run yet. Compute them with `gatescope analyze {run.path}`.")
    st.stop()

cols = st.columns(3)
neighbors = cols[0].number_input("UMAP neighbours", 2, 200, 15, key="umap_neighbors")
min_dist = cols[1].number_input("UMAP min. distance", 0.0, 1.0, 0.1, 0.05, key="umap_min_dist")


@st.cache_data(show_spinner="Fitting UMAP on the clean inputs (seconds)...", max_entries=8)
def points(path: str, sha: str, neighbors: int, min_dist: float) -> pd.DataFrame:
    from app.state import get_run

    return umap_points(get_run(path), neighbors=neighbors, min_dist=min_dist, log=lambda s: None)


table = points(path, sha, int(neighbors), float(min_dist))
kinds = list(dict.fromkeys(table["kind"]))
shown = cols[2].multiselect("Show", kinds, default=kinds, key="umap_kinds")
view = table[table["kind"].isin(shown)].reset_index(drop=True)
st.caption("Fitted on clean inputs; attacked inputs (successful attacks only) are transformed into it. "
           "Colour: true class; marker: clean or attack. Draw a lasso or a box to inspect points.")
event = st.plotly_chart(figures.decision_map(view, run.meta.class_names), key="umap", on_select="rerun",
                        selection_mode=("lasso", "box"))
selected = view.iloc[list(event.selection.point_indices)] if event and event.selection else view.iloc[:0]
st.download_button("Download points (CSV)", view.to_csv(index=False), file_name=f"{run.path.name}-umap.csv",
                   mime="text/csv")
if len(selected):
    st.subheader(f"{len(selected)} selected")
    summary = selected.groupby("kind").agg(points=("source", "size"), wrong=("pred", lambda p: int(
        (p != selected.loc[p.index, "label"]).sum())))
    st.dataframe(summary)
    st.dataframe(selected[["kind", "source", "label", "pred"]].head(200), hide_index=True)
