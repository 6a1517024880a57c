"""The analyze pipeline end to end on a copy of the shipped model and 120 test images."""

import shutil
import time

import numpy as np
import pytest
import torch

from analysis.adversarial.adaptive import adaptive_pgd
from analysis.analyze import AnalyzeConfig, analyze, steps, umap_points
from analysis.embedding import umap_embedding
from analysis.store import AnalysisStore
from conftest import DEFAULT_RUN
from models import load_run

pytestmark = pytest.mark.slow
CONFIG = AnalyzeConfig(limit=120, attacks=("fgsm", "pgd"), reference=300, n_boot=50, adaptive_limit=30,
                       detectors=("decision-logreg", "decision-class", "margin", "kd-bu", "lid", "mahalanobis-lee",
                                  "mahalanobis"))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "dynamic"
    shutil.copytree(DEFAULT_RUN, path, ignore=shutil.ignore_patterns("analysis"))  # a fresh analysis
    run = load_run(path)
    messages = []
    result = analyze(run, CONFIG, log=messages.append)
    return run, result, messages


def test_every_entry_is_stored_with_its_parameters(analysed):
    run, result, _ = analysed
    store = AnalysisStore(run)
    for name in ("clean", "attack-fgsm", "attack-pgd", "detection", "compute", "umap"):
        assert store.params(name) is not None, name
    rows = store.table("attack-pgd", "rows")
    clean = store.table("clean", "rows")
    # only correctly classified clean inputs are attacked
    assert set(rows["source"]) == set(np.flatnonzero(clean["label"] == clean["pred"]))
    assert (rows["linf"] <= 0.3 + 1e-6).all()
    assert store.array("attack-pgd", "log_probs").shape == (len(rows), 4, 40)


def test_detection_table_has_every_detector_with_intervals(analysed):
    _, result, _ = analysed
    for attack in ("fgsm", "pgd"):
        summary = result["attacks"][attack]
        assert 0.5 < summary["success_rate"] <= 1.0
        assert set(summary["detectors"]) == set(CONFIG.detectors) | {"kd-bu:fixed", "lid:fixed"}  # + simplified
        for det, m in summary["detectors"].items():
            assert m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]
            assert 0 <= m["tpr_at_5fpr"] <= 1
            assert m["validation_auc"] is not None and m["family"]
        assert result["best_decision"][attack] in ("decision-logreg", "decision-class")
    assert result["attacks"]["pgd"]["detectors"]["decision-logreg"]["auc"] > 0.9  # attacks on MNIST are visible
    assert result["attacks"]["pgd"]["detectors"]["mahalanobis-lee"]["params"]["magnitude"] in (
        0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)
    assert set(result["transfer"]) == set(result["attacks"]["pgd"]["detectors"])  # every detector
    assert set(result["transfer"]["lid"]["fgsm"]) == {"fgsm", "pgd"}
    assert len(result["layers"]["pgd"]) == 4
    assert set(result["adaptive"]) == set(result["attacks"]["pgd"]["detectors"])
    for det, a in result["adaptive"].items():
        assert a["attacked"] == 30 and a["crafted_against"] == det  # every one here is differentiable


def test_the_map_reading_aid_scores_every_stored_point(analysed):
    from analysis.analyze import map_reading_scores

    run, _, _ = analysed
    scores = map_reading_scores(run)
    store = AnalysisStore(run)
    n = {kind: len(store.table(entry, "rows")) for kind, entry in
         (("clean", "clean"), ("fgsm", "attack-fgsm"), ("pgd", "attack-pgd"))}
    assert sorted(scores) == sorted((kind, i) for kind, count in n.items() for i in range(count))
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    clean = np.mean([v for (kind, _), v in scores.items() if kind == "clean"])
    assert np.mean([v for (kind, _), v in scores.items() if kind == "pgd"]) > clean + 0.3  # visible on MNIST


def test_a_second_run_reuses_everything(analysed):
    run, result, _ = analysed
    messages = []
    t0 = time.perf_counter()
    again = analyze(run, CONFIG, log=messages.append)
    assert time.perf_counter() - t0 < 10
    assert messages == [] and again == result


def test_new_weights_make_the_analysis_stale(analysed, tmp_path):
    run, _, _ = analysed
    other = tmp_path / "other"
    shutil.copytree(run.path, other)
    moved = load_run(other)
    from models import save_run

    with torch.no_grad():
        moved.model.fc.bias.add_(0.01)
    save_run(other, moved.model, moved.meta)
    store = AnalysisStore(load_run(other))
    assert store.params("clean") is None, "an analysis of other weights is not shown"
    assert store.stale() and not AnalysisStore(run).stale()


def test_umap_is_reproducible_for_a_fixed_seed():
    rng = np.random.default_rng(0)
    clean, adv = rng.normal(size=(200, 12)), rng.normal(1.0, size=(30, 12))
    a = umap_embedding(clean, {"pgd": adv}, seed=3)
    b = umap_embedding(clean, {"pgd": adv}, seed=3)
    assert np.array_equal(a["clean"], b["clean"]) and np.array_equal(a["pgd"], b["pgd"])
    assert a["clean"].shape == (200, 2) and a["pgd"].shape == (30, 2)


@pytest.mark.parametrize("name", ["decision-logreg", "kd-bu", "mahalanobis-lee"])
def test_adaptive_pgd_lowers_the_detector_score_and_still_fools_the_model(name):
    from analysis import load_dataset
    from analysis.adversarial.attacks import create_attack
    from analysis.adversarial.detectors import create_detector

    run = load_run(DEFAULT_RUN)
    ref_x, ref_y = load_dataset("mnist5k", "train").dataset.tensors
    images, labels = load_dataset("mnist5k", "test").dataset.tensors
    x, y = images[:120], labels[:120]
    torch.manual_seed(0)
    oblivious = create_attack("pgd", run.model, eps=0.3, step_size=0.03, steps=10)(x, y)
    det = create_detector(name, run.model, ref_x[:300], ref_y[:300]).fit(x[:80], oblivious.x_adv[:80])
    xs, ys = x[80:], y[80:]
    torch.manual_seed(1)
    adaptive, fooled = adaptive_pgd(run.model, det.torch_logit, xs, ys, eps=0.3, step=0.03, steps=10)
    plain = oblivious.x_adv[80:]
    assert fooled.float().mean() >= 0.9  # still adversarial
    assert det.score(adaptive[fooled]).mean() < det.score(plain).mean() - 0.2  # and far less suspicious
    assert (adaptive - xs).abs().max() <= 0.3 + 1e-6 and adaptive.min() >= 0 and adaptive.max() <= 1


def test_clean_features_stream_to_disk_in_chunks_equal_to_one_pass(tmp_path, monkeypatch):
    import analysis.analyze as analyze_module
    from analysis import collect, load_dataset
    from analysis.analyze import outputs_table

    run_path = tmp_path / "streamed"
    shutil.copytree(DEFAULT_RUN, run_path, ignore=shutil.ignore_patterns("analysis", "speed.json"))
    monkeypatch.setattr(analyze_module, "CHUNK", 170)  # 600 images: chunks of 170, 170, 170, 90
    run = load_run(run_path)
    analyze(run, AnalyzeConfig(split="all", limit=600, attacks=()), log=lambda s: None)
    store = AnalysisStore(run)
    assert store.names() == ["clean", "umap"]  # no attacks: features and the map only
    split = load_dataset("mnist5k", "all")
    assert len(split) == 5000 and split.split == "all"
    expected = collect(run.model, split.with_dataset(torch.utils.data.Subset(split.dataset, range(600))))
    assert store.table("clean", "rows").equals(outputs_table(expected))
    np.testing.assert_allclose(store.array("clean", "log_probs"), expected.log_probs, atol=1e-6)
    assert not [f for f in store.path.iterdir() if f.name.endswith(".tmp")]
    assert all(store.entries()[name]["took"]["cpu_seconds"] > 0 for name in ("clean", "umap"))


def test_an_interrupted_audit_resumes_with_the_next_attack(tmp_path, monkeypatch):
    import analysis.adversarial.audit as audit_module

    path = tmp_path / "dynamic"
    shutil.copytree(DEFAULT_RUN, path, ignore=shutil.ignore_patterns("analysis"))
    config = AnalyzeConfig(limit=120, attacks=("fgsm", "pgd"), reference=300, n_boot=50, adaptive=False,
                           compute_eps=(), detectors=("decision-logreg", "margin"), simplified=False, umap=False)
    real, done = audit_module.audit_attack, []

    def dies_on_pgd(*args, **kwargs):
        if args[3] == "pgd":
            raise KeyboardInterrupt("killed")
        done.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(audit_module, "audit_attack", dies_on_pgd)
    with pytest.raises(KeyboardInterrupt):
        analyze(load_run(path), config, log=lambda s: None)
    store = AnalysisStore(load_run(path))
    assert done == ["fgsm"] and store.params("detection-fgsm") is not None and store.params("detection") is None

    monkeypatch.setattr(audit_module, "audit_attack", lambda *a, **k: (done.append(a[3]), real(*a, **k))[1])
    messages = []
    resumed = analyze(load_run(path), config, log=messages.append)
    assert done == ["fgsm", "pgd"]  # fgsm's part was not computed again
    assert "detection on fgsm: kept from an earlier run" in messages
    fresh = tmp_path / "fresh"
    shutil.copytree(DEFAULT_RUN, fresh, ignore=shutil.ignore_patterns("analysis"))
    assert resumed == analyze(load_run(fresh), config, log=lambda s: None)  # the same as one uninterrupted run
    # every entry records what computing it cost (the report adds them up)
    took = {name: e["took"] for name, e in AnalysisStore(load_run(fresh)).entries().items()}
    assert set(took) == {"clean", "attack-fgsm", "attack-pgd", "detection-fgsm", "detection-pgd", "detection"}
    assert all(t["seconds"] > 0 and t["cpu_seconds"] > 0 for t in took.values())

    # umap=False (--no-map) leaves the map out, and out of the detection's parameters; the map page
    # computes it from the stored features when opened
    store = AnalysisStore(load_run(fresh))
    assert "umap" not in store.names() and "map (UMAP)" not in steps(config)
    assert not any(k.startswith("umap") for k in store.params("detection"))
    points = umap_points(load_run(fresh), neighbors=15, min_dist=0.1, log=lambda s: None)
    assert set(points["kind"]) == {"clean", "fgsm", "pgd"} and "umap" in AnalysisStore(load_run(fresh)).names()
