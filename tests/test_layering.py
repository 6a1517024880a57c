import subprocess
import sys

from conftest import REPO


def test_models_and_analysis_do_not_import_streamlit():
    code = "import sys, models, analysis, analysis.report; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
