"""What the channels-last layout (``models.channels_last``, used by ``gatescope analyze``) buys on
this CPU: the same network and images in the contiguous (NCHW) and the channels-last layout,
side by side in one process.

    python benchmarks/memory_layout.py [RUN] [--images 250] [--repeats 5] [--threads 1 2]

Times, medians of --repeats on --images random images of the run's input shape (what is
timed does not depend on the pixels' values, except where decisions change a gated layer's
work): a forward pass without gradients (what detectors' features and the clean features
cost), a forward and backward pass to the input (one iteration of every gradient attack), and
PGD with its default parameters for the run's dataset, per image. Also checks that both layouts
give the same logits (largest absolute difference).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from analysis.adversarial.attacks import create_attack, default_params
from analysis.analyze import dataset_kind
from models import channels_last, load_run

from timer import median_seconds  # benchmarks/timer.py, beside this script

DEFAULT_RUN = Path(__file__).resolve().parent.parent / "assets" / "cifar10" / "dynamic"


def _measure(run, x: torch.Tensor, y: torch.Tensor, repeats: int) -> tuple[dict[str, float], torch.Tensor]:
    model = run.model

    def forward():
        with torch.no_grad():
            return model(x)

    def backward():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xg), y), xg)

    attack = create_attack("pgd", model, **default_params("pgd", dataset_kind(run)))
    forward(), backward()  # warm
    times = {"forward": median_seconds(forward, repeats), "forward+backward": median_seconds(backward, repeats),
             "pgd": median_seconds(lambda: attack(x, y), max(1, repeats // 2))}
    return times, forward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", default=str(DEFAULT_RUN))
    parser.add_argument("--images", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    args = parser.parse_args()
    run = load_run(args.run)
    run.model.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.images, *run.meta.input_shape, generator=gen)
    y = torch.randint(0, run.model.fc.out_features, (args.images,), generator=gen)
    print(f"{run.path}: {args.images} random images {tuple(run.meta.input_shape)}, medians of {args.repeats}; "
          f"ms per batch (PGD: ms per image)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        plain, logits = _measure(run, x, y, args.repeats)
        with channels_last(run.model):
            fast, logits_cl = _measure(run, x, y, args.repeats)
        print(f"\n{threads} thread(s)      {'NCHW':>10} {'channels-last':>14} {'speed-up':>9}")
        for name in plain:
            scale = 1000 / (args.images if name == "pgd" else 1)
            print(f"{name:<18} {plain[name] * scale:10.1f} {fast[name] * scale:14.1f} {plain[name] / fast[name]:8.2f}x")
        print(f"largest logit difference between the layouts: {float((logits - logits_cl).abs().max()):.2e}")


if __name__ == "__main__":
    main()
