"""gatescope.app: the Streamlit workbench and the ``gatescope`` command (thin UI layer)."""
