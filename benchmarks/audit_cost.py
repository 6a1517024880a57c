"""What each part of the detection audit costs on this machine, and what a whole split would take.

    python benchmarks/audit_cost.py RUN [--data NAME=DIR] [--images 1000] [--attack-images 200]
                                        [--full 10000] [--reference 5000] [--attack-param A.N=V ...]

Measures, on the first ``--images`` images of the test split: every attack of the audit's
default list (plus BIM) on ``--attack-images`` correctly classified ones (seconds per image), and
every detector of the audit (the papers' recipes and the simplified variants): building it
(reference statistics; Lee's over the whole training split), fitting it on the training side of
the audit's split of PGD adversarials, scoring the test side, and the metrics with their 1,000
bootstrap resamples. Prints each figure, then the projected time of ``gatescope analyze`` on
``--full`` images with the default attacks, from these figures scaled linearly (attacks and
detectors per image; reference statistics once; transfer and adaptive attacks not included).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--attack-images", type=int, default=200)
    parser.add_argument("--full", type=int, default=10_000)
    parser.add_argument("--reference", type=int, default=5000)
    parser.add_argument("--attack-param", action="append", default=[], metavar="ATTACK.NAME=VALUE",
                        help="as gatescope analyze's, e.g. cw_l2.search_steps=1")
    args = parser.parse_args()
    if args.data:
        from analysis.datasets import DATA_ENV

        os.environ[DATA_ENV] = os.pathsep.join(args.data)
    import torch

    from analysis.adversarial.attacks import create_attack, default_params, parse_overrides
    from analysis.adversarial.detectors import create_detector
    from analysis.adversarial.protocol import SourceSplit, detection_metrics, labelled
    from analysis.analyze import AnalyzeConfig, _images, dataset_kind, detector_specs
    from analysis.datasets import load_run_dataset, subset
    from models import load_run

    run = load_run(args.run)
    kind = dataset_kind(run)
    split = load_run_dataset(run.meta, "test")
    x, y = _images(split.with_dataset(torch.utils.data.Subset(split.dataset, range(min(args.images, len(split))))), 250)
    with torch.no_grad():
        correct = torch.cat([run.model(x[i:i + 250]).argmax(1) for i in range(0, len(x), 250)]) == y
    accuracy = float(correct.float().mean())
    src = torch.nonzero(correct).flatten()
    print(f"{run.path}: {len(x)} test images, {accuracy:.1%} correct; torch threads {torch.get_num_threads()}")

    run.model.to(memory_format=torch.channels_last)  # as gatescope analyze runs attacks and detectors (models.channels_last)
    config = AnalyzeConfig()
    overrides = parse_overrides(args.attack_param)
    per_image: dict[str, float] = {}
    for name in ("bim", *config.attacks):
        attack = create_attack(name, run.model, **{**default_params(name, kind), **overrides.get(name, {})})
        idx = src[:args.attack_images]
        t = time.perf_counter()
        for i in range(0, len(idx), 250):
            attack(x[idx[i:i + 250]], y[idx[i:i + 250]])
        per_image[name] = (time.perf_counter() - t) / len(idx)
        print(f"attack {name:12s} {per_image[name] * 1000:8.1f} ms per image  ({attack.params})", flush=True)

    pgd = create_attack("pgd", run.model, **default_params("pgd", kind))
    adv = torch.cat([pgd(x[src[i:i + 250]], y[src[i:i + 250]]).x_adv for i in range(0, len(src), 250)])
    sides = SourceSplit.of(len(x), seed=0)
    tr, te = sides.sides(src.numpy())
    train_c, train_a = x[src[torch.from_numpy(tr)]], adv[torch.from_numpy(tr)]
    test_c, test_a = x[src[torch.from_numpy(te)]], adv[torch.from_numpy(te)]
    train = load_run_dataset(run.meta, "train")
    ref_x, ref_y = _images(subset(train, args.reference, seed=0), 250)
    lee = {"reference_loader": torch.utils.data.DataLoader(train.dataset, batch_size=250)}
    pairs = len(train_c) + len(test_c)
    print(f"\ndetectors on PGD: {len(train_c)} training-side and {len(test_c)} test-side pairs; "
          f"{len(ref_x)} reference images (Lee: all {len(train)} training images)")
    print(f"{'detector':24s} {'build s':>8s} {'fit s':>8s} {'score s':>8s} {'metrics s':>9s} {'s / 1000 pairs':>15s}")
    build_s, per_pair = 0.0, 0.0
    for label, (name, options) in detector_specs(config.detectors, simplified=True).items():
        t0 = time.perf_counter()
        det = create_detector(name, run.model, ref_x, ref_y, **(lee if name == "mahalanobis-lee" else {}), **options)
        t1 = time.perf_counter()
        det.fit(train_c, train_a)
        t2 = time.perf_counter()
        scores, labels = labelled(det.score(test_c), det.score(test_a))
        t3 = time.perf_counter()
        detection_metrics(labels, scores)
        t4 = time.perf_counter()
        work = (t4 - t1) / pairs * 1000
        build_s, per_pair = build_s + t1 - t0, per_pair + work / 1000
        print(f"{label:24s} {t1 - t0:8.1f} {t2 - t1:8.1f} {t3 - t2:8.1f} {t4 - t3:9.1f} {work:15.1f}", flush=True)

    attacked = accuracy * args.full
    attacks_s = sum(per_image[n] for n in config.attacks) * attacked
    detectors_s = per_pair * attacked * len(config.attacks)  # every attack: about every source succeeds
    print(f"\nprojected for {args.full} images ({attacked:.0f} attacked, {len(config.attacks)} attacks): attacks "
          f"{attacks_s / 60:.0f} min, detector reference statistics {build_s / 60:.1f} min, detectors fitted and "
          f"scored per attack {detectors_s / 60:.0f} min; total {(attacks_s + build_s + detectors_s) / 60:.0f} min "
          f"before the transfer matrix and the adaptive attacks")


if __name__ == "__main__":
    main()
