"""Streamlit pages (scripts run by st.navigation; thin: widgets, layout and calls)."""
