"""Streamlit entry point: ``gatescope app`` runs this script."""

import streamlit as st

st.set_page_config(page_title="gatescope", page_icon=":material/hub:", layout="wide")
pages = [st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True)]
st.navigation(pages).run()
