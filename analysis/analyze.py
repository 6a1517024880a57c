"""``gatescope analyze``: decision features of clean and attacked inputs, the audited detectors,
an adaptive attack and the UMAP of decision features, cached in the run's ``analysis/`` folder.

Each step is an entry of the :class:`~analysis.store.AnalysisStore`; rerunning with the same
parameters (and weights) reuses it, ``force`` recomputes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from models import Run

from . import distributed
from .adversarial.adaptive import adaptive_pgd, torch_logistic
from .adversarial.attacks import create_attack, default_params
from .datasets import DatasetSplit, load_run_dataset, subset
from .adversarial.protocol import SourceSplit, detection_metrics, labelled
from .adversarial.detectors import create_detector
from .embedding import umap_embedding
from .evaluation import Outputs, check_finite, collect
from .store import AnalysisStore


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``gatescope analyze`` computes (recorded with every result)."""

    split: str = "test"
    limit: int = 0  # analyse only the first N images of the split (0: all)
    attacks: tuple[str, ...] = ("fgsm", "pgd", "deepfool", "cw_l2")
    attack_params: dict = field(default_factory=dict)  # {"pgd": {"eps": 0.1}} overrides the defaults
    detectors: tuple[str, ...] = ("decision-logreg", "decision-gbm", "kd-bu", "lid", "mahalanobis")
    reference: int = 1000  # clean training images given to the baselines
    seed: int = 0
    n_boot: int = 1000  # bootstrap resamples for the 95% intervals
    adaptive: bool = True  # also run PGD against the decision-feature detector
    adaptive_weight: float = 1.0  # weight of the detector's logit in the adaptive loss
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    batch_size: int = 250


def dataset_kind(run: Run) -> str:
    """"cifar" for natural-image runs, "mnist" for digits (selects the attack defaults)."""
    return "mnist" if run.meta.input_shape[0] == 1 else "cifar"


def analyze(run: Run, config: AnalyzeConfig = AnalyzeConfig(), *, force: bool = False,
            log: Callable[[str], None] = print) -> dict:
    """Compute (or reuse) every analysis entry of ``run``; returns the detection results."""
    store = AnalysisStore(run)
    split = _split(run, config)
    clean = _clean(store, run, split, config, force, log)
    attacks = {}
    for name in config.attacks:
        attacks[name] = _attack(store, run, split, clean, name, config, force, log)
    if not distributed.is_main():
        return {}  # under torchrun, detection and the map (not per-input work) run on rank 0 alone
    detection = _detection(store, run, split, clean, attacks, config, force, log) if attacks else {}
    _umap(store, clean, attacks, config, force, log)
    return detection


def _split(run: Run, config: AnalyzeConfig) -> DatasetSplit:
    split = load_run_dataset(run.meta, config.split)  # checked: same classes and image shape
    if config.limit:
        split = split.with_dataset(torch.utils.data.Subset(split.dataset, range(min(config.limit, len(split)))))
    return split


def _images(split: DatasetSplit, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = torch.utils.data.DataLoader(split.dataset, batch_size=batch_size)
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def outputs_table(out: Outputs) -> pd.DataFrame:
    """One row per input: label, prediction, counted MACs, argmax path and active channels."""
    table = {"label": out.labels, "pred": out.preds, "macs": out.macs}
    for l in range(out.paths.shape[1]):
        table[f"path_{l}"] = out.paths[:, l]
        table[f"active_{l}"] = out.active[:, l]
    return pd.DataFrame(table)


def _clean(store, run, split, config, force, log) -> dict:
    params = {"split": config.split, "limit": config.limit}
    if force or not store.has("clean", params):
        log(f"clean decision features of {len(split)} {config.split} images")
        if distributed.active():  # gathered to every process; rank 0 writes
            out = collect(run.model, split, batch_size=config.batch_size, progress=True)
            if distributed.is_main():
                store.save("clean", params, tables={"rows": outputs_table(out)}, arrays={"log_probs": out.log_probs})
            distributed.barrier()
        else:  # streamed to disk chunk by chunk: memory stays flat however large the split
            store.save_streamed("clean", params, _feature_chunks(run, split, config.batch_size), len(split))
    return {"rows": store.table("clean", "rows"), "log_probs": store.array("clean", "log_probs")}


CHUNK = 5000  # images per streamed chunk of clean features


def _feature_chunks(run: Run, split: DatasetSplit, batch_size: int):
    """(rows table, {"log_probs": ...}) per chunk of the split, with a progress bar over images."""
    with tqdm(total=len(split), desc="clean decision features", unit="img") as bar:
        for start in range(0, len(split), CHUNK):
            part = split.with_dataset(torch.utils.data.Subset(split.dataset, range(start, min(start + CHUNK, len(split)))))
            out = collect(run.model, part, batch_size=batch_size)
            bar.update(len(part))
            yield outputs_table(out), {"log_probs": out.log_probs}


def _attack(store, run, split, clean, name, config, force, log) -> dict:
    attack_params = {**default_params(name, dataset_kind(run)), **config.attack_params.get(name, {})}
    params = {"split": config.split, "limit": config.limit, "attack": name, "params": attack_params, "seed": config.seed}
    key = f"attack-{name}"
    if force or not store.has(key, params):
        rows = clean["rows"]
        sources = np.flatnonzero(rows["label"].to_numpy() == rows["pred"].to_numpy())  # attack correct ones only
        x, y = _images(split, config.batch_size)
        attack = create_attack(name, run.model, **attack_params)
        starts = range(0, len(sources), config.batch_size)
        mine = [starts[i] for i in distributed.shard(len(starts))]  # all of them in one process
        results = []
        for start in tqdm(mine, desc=f"attack {name}", leave=False, disable=not distributed.is_main()):
            torch.manual_seed(config.seed + start)  # per batch: the same adversarials in any number of processes
            idx = torch.from_numpy(sources[start:start + config.batch_size])
            results.append(attack(x[idx], y[idx]))
        results = [r for part in distributed.gather(results) for r in part]
        x_adv = torch.cat([r.x_adv for r in results])
        out = collect(run.model, _tensor_split(split, x_adv, y[torch.from_numpy(sources)]), batch_size=config.batch_size)
        table = outputs_table(out)
        table.insert(0, "source", sources)
        table["success"] = torch.cat([r.success for r in results]).numpy()
        table["l2"] = torch.cat([r.l2 for r in results]).numpy()
        table["linf"] = torch.cat([r.linf for r in results]).numpy()
        log(f"attack {name}: {table['success'].mean():.1%} of {len(table)} correctly classified inputs flipped")
        if distributed.is_main():
            store.save(key, params, tables={"rows": table},
                       arrays={"log_probs": out.log_probs, "x_adv": x_adv.numpy().astype(np.float32)},
                       data={"attack": name, "params": attack.params})
        distributed.barrier()
    return {"rows": store.table(key, "rows"), "log_probs": store.array(key, "log_probs"), "x_adv": store.array(key, "x_adv")}


def _tensor_split(split: DatasetSplit, x: torch.Tensor, y: torch.Tensor) -> DatasetSplit:
    return split.with_dataset(TensorDataset(x, y))


def _detection(store, run, split, clean, attacks, config, force, log) -> dict:
    params = {k: v for k, v in asdict(config).items() if not k.startswith("umap_")}  # the map is not detection
    params.update(attacks={n: store.params(f"attack-{n}") for n in config.attacks}, format=2)  # 2: ROC thresholds
    if not force and store.has("detection", params):
        return store.data("detection")
    x, _ = _images(split, config.batch_size)
    ref = subset(load_run_dataset(run.meta, "train"), config.reference, seed=config.seed)
    ref_x, ref_y = _images(ref, config.batch_size)
    sides = SourceSplit.of(len(x), seed=config.seed)
    features = decision_features_of(clean["log_probs"])
    results: dict = {"attacks": {}, "transfer": {}, "layers": {}, "adaptive": None,
                     "split": {"train": len(sides.train), "test": len(sides.test)}}
    trained: dict[str, object] = {}
    for name, adv in attacks.items():
        rows = adv["rows"]
        ok = rows["success"].to_numpy().astype(bool)
        src = rows["source"].to_numpy()[ok]
        tr, te = sides.sides(src)
        summary = {"attacked": int(len(rows)), "success_rate": float(ok.mean()) if len(rows) else 0.0,
                   "mean_l2": float(rows["l2"][ok].mean()) if ok.any() else float("nan"),
                   "mean_linf": float(rows["linf"][ok].mean()) if ok.any() else float("nan"),
                   "params": store.data(f"attack-{name}")["params"], "detectors": {}}
        results["attacks"][name] = summary
        if tr.sum() < 5 or te.sum() < 5:
            log(f"attack {name}: too few successful adversarials to train and test detectors")
            continue
        x_adv = torch.from_numpy(adv["x_adv"][ok])
        xc_tr, xc_te = x[torch.from_numpy(src[tr])], x[torch.from_numpy(src[te])]
        for det_name in config.detectors:
            log(f"detector {det_name} on {name}")
            det = create_detector(det_name, run.model, ref_x, ref_y).fit(xc_tr, x_adv[torch.from_numpy(tr)])
            scores, labels = labelled(det.score(xc_te), det.score(x_adv[torch.from_numpy(te)]))
            summary["detectors"][det_name] = detection_metrics(labels, scores, n_boot=config.n_boot, seed=config.seed)
            if det_name == "decision-logreg":
                trained[name] = det
        adv_features = decision_features_of(adv["log_probs"][ok])
        results["layers"][name] = _per_layer_auc(features, adv_features, src, sides, clean["log_probs"].shape[1])
    results["transfer"] = _transfer(trained, attacks, x, sides, config)
    if config.adaptive and "pgd" in trained:
        results["adaptive"] = _adaptive(run, x, clean, attacks["pgd"], sides, config, log)
    store.save("detection", params, data=results)
    return results


def decision_features_of(log_probs: np.ndarray) -> np.ndarray:
    return log_probs.reshape(len(log_probs), -1)


def _per_layer_auc(clean_f, adv_f, src, sides, n_layers) -> list[float]:
    """ROC-AUC of a logistic regression on one gated layer's log-probabilities at a time."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    k = clean_f.shape[1] // n_layers
    tr, te = sides.sides(src)
    aucs = []
    for l in range(n_layers):
        cols = slice(l * k, (l + 1) * k)
        x_tr, y_tr = labelled(clean_f[src[tr], cols], adv_f[tr, cols])
        x_te, y_te = labelled(clean_f[src[te], cols], adv_f[te, cols])
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_tr, y_tr)
        aucs.append(float(roc_auc_score(y_te, clf.predict_proba(x_te)[:, 1])))
    return aucs


def _transfer(trained: dict, attacks: dict, x: torch.Tensor, sides: SourceSplit, config) -> dict:
    """ROC-AUC of the decision-feature detector trained on one attack, tested on each other."""
    from sklearn.metrics import roc_auc_score

    matrix: dict = {}
    for train_name, det in trained.items():
        matrix[train_name] = {}
        for test_name, adv in attacks.items():
            rows = adv["rows"]
            ok = rows["success"].to_numpy().astype(bool)
            src = rows["source"].to_numpy()[ok]
            _, te = sides.sides(src)
            if te.sum() < 5:
                continue
            scores, labels = labelled(det.score(x[torch.from_numpy(src[te])]),
                                      det.score(torch.from_numpy(adv["x_adv"][ok][te])))
            matrix[train_name][test_name] = float(roc_auc_score(labels, scores))
    return matrix


def _adaptive(run, x, clean, pgd, sides, config, log) -> dict:
    """PGD that also lowers the decision-feature detector's logit (through relaxed decisions)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rows = pgd["rows"]
    ok = rows["success"].to_numpy().astype(bool)
    src = rows["source"].to_numpy()[ok]
    tr, _ = sides.sides(src)
    f_clean = decision_features_of(clean["log_probs"])
    x_tr, y_tr = labelled(f_clean[src[tr]], decision_features_of(pgd["log_probs"][ok][tr]))
    scaler = StandardScaler().fit(x_tr)
    lr = LogisticRegression(max_iter=2000).fit(scaler.transform(x_tr), y_tr)
    detector = torch_logistic(scaler, lr)
    labels_all = clean["rows"]["label"].to_numpy()
    correct = np.flatnonzero(labels_all == clean["rows"]["pred"].to_numpy())
    targets = correct[np.isin(correct, sides.test)]  # attack the held-out side only
    params = {**default_params("pgd", dataset_kind(run)), **config.attack_params.get("pgd", {})}
    log(f"adaptive PGD against the decision-feature detector on {len(targets)} inputs")
    torch.manual_seed(config.seed)
    x_adv, success = adaptive_pgd(run.model, detector, x[targets], torch.from_numpy(labels_all[targets]),
                                  eps=params["eps"], step=params["step_size"], steps=params["steps"],
                                  weight=config.adaptive_weight, batch_size=config.batch_size)
    with torch.no_grad():
        adv_logit = torch.cat([detector(run.model.decide(x_adv[i:i + 250])[1]) for i in range(0, len(x_adv), 250)])
        clean_logit = torch.cat([detector(run.model.decide(x[targets][i:i + 250])[1]) for i in range(0, len(targets), 250)])
    s = success.numpy().astype(bool)
    result = {"attacked": int(len(targets)), "success_rate": float(s.mean()), "weight": config.adaptive_weight,
              "params": params}
    if s.sum() >= 5:
        scores, labels = labelled(clean_logit.numpy(), adv_logit.numpy()[s])
        result["auc"] = float(roc_auc_score(labels, scores))
        result["evaded_at_5fpr"] = float((adv_logit.numpy()[s] < np.quantile(clean_logit.numpy(), 0.95)).mean())
    return result


def _umap(store, clean, attacks, config, force, log) -> dict:
    """Compute the "umap" entry unless stored with these parameters; returns the parameters it is
    stored under, so a caller reads its own map even if another session saves a different one."""
    params = {"split": config.split, "limit": config.limit, "neighbors": config.umap_neighbors,
              "min_dist": config.umap_min_dist, "seed": config.seed,
              "attacks": {n: store.params(f"attack-{n}") for n in attacks},  # new adversarials: new map
              "format": 2}
    if not force and store.has("umap", params):
        return params
    log("UMAP of decision features (fit on clean, transform attacked)")
    adv = {n: decision_features_of(a["log_probs"][a["rows"]["success"].to_numpy().astype(bool)]) for n, a in attacks.items()}
    coords = umap_embedding(decision_features_of(clean["log_probs"]), adv, n_neighbors=config.umap_neighbors,
                            min_dist=config.umap_min_dist, seed=config.seed)
    rows = clean["rows"]
    tables = [pd.DataFrame({"source": rows.index, "kind": "clean", "row": rows.index, "label": rows["label"],
                            "pred": rows["pred"], "x": coords["clean"][:, 0], "y": coords["clean"][:, 1]})]
    for name, a in attacks.items():
        ok = a["rows"]["success"].to_numpy().astype(bool)
        rows = a["rows"][ok]
        tables.append(pd.DataFrame({"source": rows["source"].to_numpy(), "kind": name, "row": np.flatnonzero(ok),
                                    "label": rows["label"].to_numpy(), "pred": rows["pred"].to_numpy(),
                                    "x": coords[name][:, 0], "y": coords[name][:, 1]}))
    store.save("umap", params, tables={"points": pd.concat(tables, ignore_index=True)})
    return params


def umap_points(run: Run, *, neighbors: int, min_dist: float, seed: int = 0,
                log: Callable[[str], None] = print) -> pd.DataFrame:
    """The UMAP of the decision features stored for ``run`` (clean and every stored attack),
    computed and cached when these parameters are new. One row per point: source image,
    kind ("clean" or the attack), row in that entry's table, label, prediction, x, y."""
    store = AnalysisStore(run)
    stored = store.params("clean")
    if stored is None:
        raise ValueError(f"{run.path}: no decision features stored; run gatescope analyze first")
    names = [n.removeprefix("attack-") for n in store.names() if n.startswith("attack-")]
    config = AnalyzeConfig(split=stored["split"], limit=stored["limit"], attacks=tuple(names), seed=seed,
                           umap_neighbors=neighbors, umap_min_dist=min_dist)
    clean = {"rows": store.table("clean", "rows", stored), "log_probs": store.array("clean", "log_probs", stored)}
    attacks = {n: {"rows": store.table(f"attack-{n}", "rows"), "log_probs": store.array(f"attack-{n}", "log_probs")}
               for n in names}
    for name, entry in {"clean": clean, **attacks}.items():  # stored files are untrusted too
        check_finite(f"{store.path}: the stored decision features ({name})", torch.from_numpy(entry["log_probs"]))
    params = _umap(store, clean, attacks, config, False, log)
    return store.table("umap", "points", params)  # these parameters' points, not the latest session's
