import re
import shutil
import subprocess
import sys

import pytest

from app.cli import main
from conftest import DEFAULT_RUN, REPO


def test_list_names_architectures_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "resnet56" in out and "small_cnn" in out and "imagefolder" in out


def test_report_prints_the_acceptance_figures(capsys):
    assert main(["report", str(DEFAULT_RUN)]) == 0
    out = capsys.readouterr().out
    assert "1. test accuracy: 0.9" in out and "2. counted MACs" in out and "3. distinct actions" in out


def test_a_wrong_run_path_is_one_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gatescope: error:") and "no such run folder" in err
    assert "Traceback" not in err


def test_a_wrong_dataset_path_is_one_clear_error(tmp_path, capsys):
    assert main(["train", str(tmp_path / "out"), "--dataset", f"imagefolder:{tmp_path}/none", "--no-progress"]) == 1
    assert "expects ROOT/{train,test}" in capsys.readouterr().err


def test_app_refuses_a_foreign_folder_before_starting_a_server(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app.cli", "app", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "model.json: missing" in out.stderr


@pytest.mark.slow
def test_analyze_then_report_prints_the_detection_table(tmp_path, capsys):
    run = tmp_path / "dynamic"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    args = ["analyze", str(run), "--limit", "80", "--attacks", "fgsm", "--detectors", "decision-logreg", "--no-adaptive"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fgsm (fixed budget): success" in out and "decision-logreg" in out and "ROC-AUC" in out
    assert main(["report", str(run)]) == 0
    assert "fgsm (fixed budget): success" in capsys.readouterr().out
    assert main(["report", str(run), "--audit-markdown"]) == 0  # the README's table
    rows = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert rows["| detector"].count("|") == rows["| `decision-logreg`"].count("|")  # one cell per column
    assert float(re.search(r"\d\.\d{3}", rows["| `decision-logreg`"].split(" | ")[1]).group()) > 0.5
    assert "| 8/255" in rows  # the compute attack's table
    assert main(["analyze", str(run), "--attack-param", "fgsm.eps"]) == 1
    assert "expected ATTACK.NAME=VALUE" in capsys.readouterr().err


def test_app_hands_its_runs_and_roots_to_the_page_and_binds_to_loopback(monkeypatch, tmp_path):
    import os

    from app.roots import ROOTS_ENV, RUNS_ENV

    launched = {}
    monkeypatch.setattr(os, "execv", lambda exe, cmd: launched.update(cmd=cmd, runs=os.environ[RUNS_ENV],
                                                                        roots=os.environ[ROOTS_ENV]))
    monkeypatch.setenv(RUNS_ENV, "")
    monkeypatch.setenv(ROOTS_ENV, "")
    assert main(["app", str(DEFAULT_RUN), "--root", str(tmp_path), "--port", "8600"]) == 0
    assert launched["runs"] == str(DEFAULT_RUN.resolve()) and launched["roots"] == str(tmp_path.resolve())
    cmd = launched["cmd"]
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1" and cmd[cmd.index("--server.port") + 1] == "8600"
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "8"  # MB, enforced by the server itself
    main(["app", str(DEFAULT_RUN), "--max-upload-mb", "2"])
    assert launched["cmd"][launched["cmd"].index("--server.maxUploadSize") + 1] == "2"
    assert main(["app", "--root", str(tmp_path / "missing")]) == 1
