"""Streamlit entry point: ``gatescope app`` runs this script."""

import streamlit as st

st.set_page_config(page_title="gatescope", layout="wide")  # no icons: Streamlit fetches them from the web
pages = [
    st.Page("views/overview.py", title="Overview", default=True),
    st.Page("views/paths.py", title="Decision paths"),
    st.Page("views/feature_map.py", title="Decision-feature map"),
    st.Page("views/detection.py", title="Detection"),
    st.Page("views/pruning.py", title="Pruning"),
    st.Page("views/compare.py", title="Compare"),
]
st.navigation(pages).run()
