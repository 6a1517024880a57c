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
    steps = ["clean decision features", "attack fgsm", "detectors' reference statistics", "detection on fgsm",
             "compute attack", "map (UMAP)", "**total**"]  # what each step cost, in the order analyze runs them
    assert [r for r in rows if r[2:].split(" |")[0] in steps] == [f"| {s}" for s in steps]
    assert float(rows["| **total**"].split(" | ")[2].rstrip(" |")) > 0  # CPU seconds, all recorded
    assert main(["analyze", str(run), "--attack-param", "fgsm.eps"]) == 1
    assert "expected ATTACK.NAME=VALUE" in capsys.readouterr().err


def test_app_hands_its_runs_and_roots_to_the_page_and_binds_to_loopback(monkeypatch, tmp_path):
    import os

    from app.roots import ROOTS_ENV, RUNS_ENV

    import app.cli

    launched = {}
    monkeypatch.setattr(app.cli, "_serve", lambda cmd: launched.update(cmd=cmd, runs=os.environ[RUNS_ENV],
                                                                       roots=os.environ[ROOTS_ENV]) or 0)
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


def _onnx_logits(file, images):
    from models.export import onnx_logits, onnx_session

    return onnx_logits(onnx_session(file.read_bytes()), images)


def _test_images(run_path, n: int = 64):
    import torch

    from analysis.datasets import load_run_dataset
    from models import read_meta

    split = load_run_dataset(read_meta(run_path), "test")
    return torch.stack([split.dataset[i][0] for i in range(n)])


def _gates_run(path):
    """An untrained small_cnn run with learned-gate slots (as `prune learn-gates` writes), gates random."""
    import torch

    from models import RunMeta, build_model, prunable_convs, save_run

    meta = RunMeta(arch="small_cnn", arch_args={"gated": False, "channel_gates": True, "num_classes": 10,
                                                "in_channels": 1}, dataset="mnist5k",
                   class_names=[str(i) for i in range(10)], input_shape=[1, 28, 28], mean=[0.1307], std=[0.3081])
    model = build_model(meta)
    with torch.no_grad():
        for conv in prunable_convs(model):
            conv.gate.uniform_(0.05, 1.0)
    save_run(path, model, meta)
    return path


def test_export_of_the_shipped_static_and_thresholded_dynamic_runs_equals_pytorch_in_onnxruntime(tmp_path, capsys):
    import torch

    from analysis.pruning import threshold_masks
    from conftest import BASELINE_RUN
    from models import load_run

    assert main(["export", str(BASELINE_RUN), str(tmp_path / "baseline.onnx"), "--limit", "200"]) == 0
    out = capsys.readouterr().out
    assert "equal to PyTorch's within 0.0001 on 200 test images" in out and "batch 64" in out
    images = _test_images(BASELINE_RUN)
    with torch.no_grad():
        assert abs(_onnx_logits(tmp_path / "baseline.onnx", images) - load_run(BASELINE_RUN).model(images).numpy()).max() <= 1e-4

    assert main(["export", str(DEFAULT_RUN), str(tmp_path / "dynamic.onnx"), "--mask-threshold", "0.5",
                 "--limit", "200"]) == 0
    assert "equal to PyTorch's" in capsys.readouterr().out
    model = load_run(DEFAULT_RUN).model
    exported = _onnx_logits(tmp_path / "dynamic.onnx", images)
    with torch.no_grad():
        thresholded, _ = threshold_masks(model, 0.5).decide(images)
        untouched = model(images).numpy()
    assert abs(exported - thresholded.numpy()).max() <= 1e-4
    assert abs(exported - untouched).max() > 1e-2  # the threshold is in the file, not the trained masks


def test_export_of_a_structure_built_by_prune_build_has_its_widths(tmp_path, capsys):
    import json

    import onnx

    gates = _gates_run(tmp_path / "gates")
    assert main(["prune", "build", str(gates), str(tmp_path / "pruned"), "--target", "0.5"]) == 0
    widths = json.loads((tmp_path / "pruned" / "structure.json").read_text())["widths"]
    assert main(["export", str(tmp_path / "pruned"), str(tmp_path / "pruned.onnx"), "--limit", "100"]) == 0
    assert "equal to PyTorch's within 0.0001 on 100 test images" in capsys.readouterr().out
    graph = onnx.load(tmp_path / "pruned.onnx").graph
    weights = {t.name: list(t.dims) for t in graph.initializer}
    assert [weights[n.input[1]][0] for n in graph.node if n.op_type == "Conv"] == widths
    assert sum(widths) < 16 + 32 + 64 + 64 + 128  # thinned, not masked


@pytest.mark.parametrize("case, expected", [
    ("missing run", "no such run folder"),
    ("gates run", "not a pruned structure: build one with `gatescope prune build"),
    ("threshold on a static run", "a mask threshold applies to dynamic runs"),
    ("negative threshold", "must be a finite number >= 0"),
    ("not .onnx", "should end in .onnx"),
    ("no onnxruntime", "onnxruntime is not installed"),
])
def test_export_errors_are_one_line_and_write_nothing(case, expected, tmp_path, capsys, monkeypatch):
    from conftest import BASELINE_RUN

    out = tmp_path / "model.onnx"
    args = {"missing run": [str(tmp_path / "nope"), str(out)],
            "gates run": [str(_gates_run(tmp_path / "gates")), str(out)],
            "threshold on a static run": [str(BASELINE_RUN), str(out), "--mask-threshold", "0.1"],
            "negative threshold": [str(DEFAULT_RUN), str(out), "--mask-threshold", "-1"],
            "not .onnx": [str(BASELINE_RUN), str(tmp_path / "model.pt")],
            "no onnxruntime": [str(BASELINE_RUN), str(out)]}[case]
    if case == "no onnxruntime":
        monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["export", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gatescope: error:") and expected in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "model.pt").exists()


def test_import_from_the_dynamic_pruning_code_writes_a_run_that_says_where_it_came_from(tmp_path, capsys):
    import json

    import torch

    from reference_code import images, normalise, reference
    from models import load_run

    net = reference("resnet20", k=4)
    torch.save({"epoch": 5, "state_dict": net.state_dict()}, tmp_path / "checkpoint.pth.tar")
    out = tmp_path / "run"
    assert main(["import", str(tmp_path / "checkpoint.pth.tar"), str(out), "--from", "dynamic-pruning",
                 "--arch", "resnet20", "--classes", "cifar10"]) == 0
    assert "wrote" in capsys.readouterr().out
    training = json.loads((out / "model.json").read_text())["training"]
    assert (training["imported_format"], training["imported_arch"], training["imported_epoch"]) == (
        "dynamic-pruning", "resnet20", 5)
    x = images(4)
    with torch.no_grad():
        torch.testing.assert_close(load_run(out).model(x), net(normalise(x))[0], rtol=0, atol=1e-5)


def test_import_from_without_arch_or_of_the_wrong_arch_is_one_clear_error(tmp_path, capsys):
    import torch

    from reference_code import reference

    torch.save({"state_dict": reference("resnet20", k=4).state_dict()}, tmp_path / "c.pth.tar")
    assert main(["import", str(tmp_path / "c.pth.tar"), str(tmp_path / "a"), "--from", "dynamic-pruning"]) == 1
    assert "needs --arch" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "c.pth.tar"), str(tmp_path / "b"), "--from", "dynamic-pruning",
                 "--arch", "vgg16"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a dynamic-pruning vgg16 checkpoint: missing feature.0.conv.weight" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_app_warms_up_what_the_first_page_needs_and_survives_a_broken_run(tmp_path):
    """`gatescope app` imports the first page's modules and loads the first run before serving; a run
    whose weights are damaged is left for the page to report. Loading a run and reading its data
    import neither torch._dynamo nor torchvision (each costs a launch more than a second of CPU)."""
    broken = tmp_path / "broken"
    shutil.copytree(DEFAULT_RUN, broken, ignore=shutil.ignore_patterns("analysis"))
    (broken / "model.safetensors").write_bytes(b"not weights")
    script = ("import sys; from app.cli import PRELOAD, _warm; "
              f"_warm([__import__('pathlib').Path({str(broken)!r})]); "
              "assert all(m in sys.modules for m in PRELOAD); "
              "from models import load_run; from analysis.outputs_cache import stored_outputs; "
              f"stored_outputs(load_run({str(DEFAULT_RUN)!r}), 'test'); "
              "print(sorted(m for m in ('torch._dynamo', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
