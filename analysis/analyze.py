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

from models import Run, channels_last

from . import distributed
from .adversarial.attacks import create_attack, default_params
from .adversarial.audit import AuditInputs, audit
from .adversarial.compute_attack import compute_attack_report, eps_label
from .adversarial.detectors import create_detector
from .datasets import DatasetSplit, load_run_dataset, subset
from .embedding import umap_embedding
from .evaluation import Outputs, check_finite, collect
from .store import AnalysisStore, Stopwatch


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``gatescope analyze`` computes (recorded with every result)."""

    split: str = "test"
    limit: int = 0  # analyse only the first N images of the split (0: all)
    # minimal (deepfool, cw_l2) and confident (cw_l2_k10, cw_l2_k20, pgd_margin) attacks side by side
    attacks: tuple[str, ...] = ("fgsm", "pgd", "deepfool", "cw_l2", "cw_l2_k10", "cw_l2_k20", "pgd_margin")
    attack_params: dict = field(default_factory=dict)  # {"pgd": {"eps": 0.1}} overrides the defaults
    detectors: tuple[str, ...] = ("decision-logreg", "decision-gbm", "decision-class", "decision-class+lp",
                                  "decision+margin", "decision-class+margin", "msp", "margin", "kd-bu", "lid",
                                  "mahalanobis-lee", "mahalanobis")
    simplified: bool = True  # also the simplified baselines (fixed KD bandwidth, fixed LID k; "mahalanobis")
    reference: int = 1000  # clean training images for class statistics, densities and neighbours (Lee: all)
    seed: int = 0
    n_boot: int = 1000  # bootstrap resamples for the 95% intervals
    adaptive: bool = True  # also attack every detector adaptively (PGD's budget)
    adaptive_limit: int = 1000  # test-side inputs attacked adaptively per detector
    compute_eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255)  # L-inf budgets of the compute (MACs) attack; () skips it
    compute_limit: int = 0  # inputs given to the compute attack (0: every analysed image)
    umap: bool = True  # also the map (False: the map page computes it when opened)
    umap_neighbors: int = 15
    umap_min_dist: float = 0.1
    batch_size: int = 250


def dataset_kind(run: Run) -> str:
    """"cifar" for natural-image runs, "mnist" for digits (selects the attack defaults)."""
    return "mnist" if run.meta.input_shape[0] == 1 else "cifar"


def steps(config: AnalyzeConfig) -> list[str]:
    """The steps :func:`analyze` goes through with ``config``, in order (what a progress display
    counts); a step whose result is stored already passes at once."""
    names = ["clean decision features", *(f"attack {a}" for a in config.attacks)]
    if config.attacks:
        names += ["detectors' reference statistics", *(f"detection on {a}" for a in config.attacks)]
        if config.compute_eps:
            names.append("compute attack")
    return names + (["map (UMAP)"] if config.umap else [])


def analyze(run: Run, config: AnalyzeConfig = AnalyzeConfig(), *, force: bool = False,
            log: Callable[[str], None] = print, step: Callable[[str], None] = lambda name: None) -> dict:
    """Compute (or reuse) every analysis entry of ``run``; returns the detection results.
    ``step`` is called with each name of :func:`steps` as that step begins."""
    store = AnalysisStore(run)
    split = _split(run, config)
    step("clean decision features")
    clean = _clean(store, run, split, config, force, log)  # as every page computes them: the same bits
    with channels_last(run.model):  # the attacks and detectors' passes run faster on a CPU
        attacks = {}
        for name in config.attacks:
            step(f"attack {name}")
            attacks[name] = _attack(store, run, split, clean, name, config, force, log)
        if not distributed.is_main():
            return {}  # under torchrun, detection and the map (not per-input work) run on rank 0 alone
        detection = _detection(store, run, split, clean, attacks, config, force, log, step) if attacks else {}
        if config.compute_eps and attacks:  # --attacks none: features and the map only
            step("compute attack")
            _compute(store, run, split, config, force, log)
    if config.umap:
        step("map (UMAP)")
        _umap(store, clean, attacks, config, force, log)
    return detection


def _compute(store, run, split, config, force, log) -> dict:
    """The compute attack: counted MACs before and after, per eps (the "compute" entry)."""
    params = {"split": config.split, "limit": config.limit, "eps": list(config.compute_eps),
              "n": config.compute_limit, "seed": config.seed}
    if force or not store.has("compute", params):
        clock = Stopwatch()
        x, y = _images(split, config.batch_size)
        if config.compute_limit:
            x, y = x[:config.compute_limit], y[:config.compute_limit]
        log(f"compute attack (counted MACs) on {len(x)} images, eps {', '.join(eps_label(e) for e in config.compute_eps)}")
        report = compute_attack_report(run.model, x, y, input_shape=tuple(run.meta.input_shape),
                                       eps_values=list(config.compute_eps), batch_size=config.batch_size, log=log)
        store.save("compute", params, data=report, took=clock.took())
    return store.data("compute")


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
        clock = Stopwatch()
        log(f"clean decision features of {len(split)} {config.split} images")
        if distributed.active():  # gathered to every process; rank 0 writes
            out = collect(run.model, split, batch_size=config.batch_size, progress=True)
            if distributed.is_main():
                store.save("clean", params, tables={"rows": outputs_table(out)}, arrays={"log_probs": out.log_probs},
                           took=clock.took())
            distributed.barrier()
        else:  # streamed to disk chunk by chunk: memory stays flat however large the split
            store.save_streamed("clean", params, _feature_chunks(run, split, config.batch_size), len(split),
                                took=clock.took)
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
        clock = Stopwatch()
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
                       data={"attack": name, "params": attack.params}, took=clock.took())
        distributed.barrier()
    return {"rows": store.table(key, "rows"), "log_probs": store.array(key, "log_probs"), "x_adv": store.array(key, "x_adv")}


def _tensor_split(split: DatasetSplit, x: torch.Tensor, y: torch.Tensor) -> DatasetSplit:
    return split.with_dataset(TensorDataset(x, y))


def _detection(store, run, split, clean, attacks, config, force, log, step) -> dict:
    params = {k: v for k, v in asdict(config).items() if not k.startswith("umap")}  # the map is not detection
    params.update(attacks={n: store.params(f"attack-{n}") for n in config.attacks}, format=3)  # 3: the full audit
    if not force and store.has("detection", params):
        return store.data("detection")
    step("detectors' reference statistics")
    clock = Stopwatch()  # the reference statistics and the final table: the parts record their own
    x, _ = _images(split, config.batch_size)
    train = load_run_dataset(run.meta, "train")
    ref_x, ref_y = _images(subset(train, config.reference, seed=config.seed), config.batch_size)
    lee = {"reference_loader": torch.utils.data.DataLoader(train.dataset, batch_size=config.batch_size)}
    specs = detector_specs(config.detectors, simplified=config.simplified)
    detectors = {label: create_detector(name, run.model, ref_x, ref_y, **(lee if name == "mahalanobis-lee" else {}),
                                        **options) for label, (name, options) in _logged(specs, log)}
    inputs = AuditInputs(x=x, clean_rows=clean["rows"], clean_log_probs=clean["log_probs"],
                         attacks={n: attacks[n] for n in config.attacks},
                         attack_params={n: store.data(f"attack-{n}")["params"] for n in config.attacks})

    def stored(name: str, compute: Callable[[], dict]) -> dict:
        """Each attack's part of the audit is an entry of its own, saved as soon as it is done, so an
        interrupted audit resumes with the next attack (its parameters: the whole audit's)."""
        step(f"detection on {name}")
        key, part_params = f"detection-{name}", {**params, "part": name}
        if force or not store.has(key, part_params):
            part_clock = Stopwatch()
            store.save(key, part_params, data=compute(), took=part_clock.took())
        else:
            log(f"detection on {name}: kept from an earlier run")
        return store.data(key, part_params)

    before_parts = clock.took()
    results = audit(run.model, inputs, detectors, seed=config.seed, n_boot=config.n_boot,
                    adaptive_on="pgd" if config.adaptive else None, adaptive_limit=config.adaptive_limit, log=log,
                    stored=stored)
    results["reference"] = {"images": int(len(ref_x)), "lee": int(len(train))}
    store.save("detection", params, data=results, took=before_parts)
    return results


def _logged(specs: dict, log):
    for label, spec in specs.items():
        log(f"detector {label}: reference statistics")
        yield label, spec


# the simplified variants shown beside the papers' recipes: the constants used before validation
SIMPLIFIED = {"kd-bu:fixed": ("kd-bu", {"bandwidth": 1.2}), "lid:fixed": ("lid", {"k": 20, "ref_batch": 100})}


def detector_specs(names: tuple[str, ...], *, simplified: bool) -> dict[str, tuple[str, dict]]:
    """Row label -> (registered detector, options): the named detectors, plus the simplified
    variants (fixed KD bandwidth and LID k and minibatch; ``mahalanobis`` is its own name)."""
    specs = {n: (n, {}) for n in names}
    if simplified:
        specs.update({label: spec for label, spec in SIMPLIFIED.items() if spec[0] in names})
    return specs


def decision_features_of(log_probs: np.ndarray) -> np.ndarray:
    return log_probs.reshape(len(log_probs), -1)


def _umap(store, clean, attacks, config, force, log) -> dict:
    """Compute the "umap" entry unless stored with these parameters; returns the parameters it is
    stored under, so a caller reads its own map even if another session saves a different one."""
    params = {"split": config.split, "limit": config.limit, "neighbors": config.umap_neighbors,
              "min_dist": config.umap_min_dist, "seed": config.seed,
              "attacks": {n: store.params(f"attack-{n}") for n in attacks},  # new adversarials: new map
              "format": 2}
    if not force and store.has("umap", params):
        return params
    clock = Stopwatch()
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
    store.save("umap", params, tables={"points": pd.concat(tables, ignore_index=True)}, took=clock.took())
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


def map_reading_scores(run: Run) -> dict[tuple[str, int], float]:
    """P(adversarial) of every stored point, keyed by (kind, row): "clean" or the attack, and the
    row in that entry's table, from a logistic regression on standardised decision features fitted
    on all stored points (clean against every attack). A reading aid for the map, not the audited
    detector (which never scores the inputs it was fitted on)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    store = AnalysisStore(run)
    keys, features = [], []
    for name in store.names():
        if name == "clean" or name.startswith("attack-"):
            f = store.array(name, "log_probs")
            keys += [("clean" if name == "clean" else name.removeprefix("attack-"), i) for i in range(len(f))]
            features.append(decision_features_of(f))
    if not features:
        return {}
    x = np.concatenate(features)
    y = np.array([kind != "clean" for kind, _ in keys])
    if len(np.unique(y)) < 2:
        return {}
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)
    return dict(zip(keys, clf.predict_proba(x)[:, 1].round(3).tolist()))
