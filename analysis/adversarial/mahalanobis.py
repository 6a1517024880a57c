"""Lee et al. 2018's Mahalanobis detector as the paper defines it ("A Simple Unified Framework for
Detecting Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018): class Gaussians
with a tied covariance per block from the whole training split, the confidence score of every
block after its own input pre-processing, and the noise magnitude chosen on validation.

>>> loader = DataLoader(load_dataset("cifar10", "train").dataset, batch_size=500)
>>> det = create_detector("mahalanobis-lee", model, ref_x, ref_y, reference_loader=loader)
>>> det.fit(x_clean, x_adv).score(x_test)  # (N,) probabilities in [0, 1]
>>> det.params["magnitude"], det.params["magnitude_auc"]  # the chosen step, the validation AUC of each
"""

from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.adversarial.detector_base import (
    BATCH_SIZE, Detector, DetectorError, _batches, _check_images, _evaluating, activations, register_detector,
    validation_auc,
)
from models import Network, gated_convs

MAGNITUDES = (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)  # Lee et al.'s noise magnitudes (pixel units)


@register_detector("mahalanobis-lee")
class MahalanobisLee(Detector):
    """Per block l (the output after ReLU of the last ``GatedConv`` at each spatial resolution,
    averaged over space, as Lee et al. take each residual stage's output; and ``"fc.input"`` where it
    is not the last of those already):
    the confidence ``M_l(x) = max_c -(f_l(x) - mu_lc)^T P_l (f_l(x) - mu_lc)`` at the pre-processed
    input ``x_hat = clamp(x - eps * sign(grad_x D_l(x)), 0, 1)``, ``D_l`` the squared distance to
    the closest class mean (the step raises ``M_l``); logistic regression over the blocks.

    ``mu_lc`` and the precision ``P_l`` (pseudo-inverse of the covariance shared by the classes)
    come from ``reference_loader`` (an iterable of (images, labels) batches, read once here: the
    whole un-augmented training split, in pixel space [0, 1]) or, when it is None, from
    ``ref_x, ref_y`` (which are then only checked, as every detector's). Every class of the model
    needs at least one reference image. ``magnitude`` fixes eps; None chooses it among
    ``MAGNITUDES`` on the validation part in ``fit`` (``params["magnitude_auc"]`` has each one's AUC).

    Differences from Lee et al.'s code, none of which changes the score's meaning: eps is in pixel
    units, as are their magnitudes (their step is ``magnitude * sign / std`` on normalised inputs,
    i.e. ``magnitude * sign`` on pixels); the score has no factor 1/2 (the standardised logistic
    regression does not see it); a pixel with a zero gradient stays put (theirs moves by -eps) and
    ``x_hat`` is clamped to valid images (theirs is not).

    ``torch_features`` treats the step as a constant (BPDA: ``d x_hat / d x`` is the identity), so
    an adaptive attack differentiates ``M_l`` at ``x_hat``. The step is always the deployed
    detector's (eval mode, argmax decisions), so inside ``models.relaxed_decisions`` the value of
    ``torch_logit`` is still the logit of ``score``.

    Cost per image: ``features`` one forward pass and, per block, one backward pass and one
    forward pass that stops at that block (one forward pass in all when eps is 0); ``select``
    shares the forward and backward passes among ``MAGNITUDES`` and adds one such partial forward
    pass per block and non-zero magnitude, and hands ``fit`` the chosen magnitude's features.
    """

    family = "baseline"

    def __init__(self, model: Network, ref_x: Tensor, ref_y: Tensor, *,
                 reference_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
                 magnitude: float | None = None, batch_size: int = BATCH_SIZE):
        super().__init__(model, ref_x, ref_y, batch_size=batch_size)
        if magnitude is not None and not (isinstance(magnitude, numbers.Real) and math.isfinite(magnitude)
                                          and magnitude >= 0):
            raise DetectorError(f"magnitude must be a finite number >= 0 (pixel units) or None to choose it "
                                f"on validation, got {magnitude!r}")
        self._search = magnitude is None
        self._blocks = _stage_outputs(model, ref_x[:2])
        self._modules_by_name = dict(model.named_modules())
        pairs = _pairs(ref_x, ref_y, batch_size) if reference_loader is None else reference_loader
        self.means, self.precisions, n = self._class_gaussians(pairs)
        self.feature_names = list(self.means)
        self.params.update(magnitude=None if magnitude is None else float(magnitude), n_reference=n,
                           reference="ref_x" if reference_loader is None else "reference_loader")

    # -- class statistics -------------------------------------------------------------------

    def _class_gaussians(self, pairs: Iterable) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
        """Per block, the class means (C, D) and the tied precision (D, D), float64 on the model's
        device, streamed over ``pairs``; and the number of images read."""
        classes, device = self.model.fc.out_features, self.model.mean.device
        moments: dict[str, _ClassMoments] = {}
        counts = torch.zeros(classes, dtype=torch.long, device=device)
        with _evaluating(self.model), torch.no_grad():
            for xb, yb in _checked(pairs, classes):
                xb, yb = xb.to(device), yb.to(device)
                counts += torch.bincount(yb, minlength=classes)
                for name, f in self._pooled(xb).items():
                    moments.setdefault(name, _ClassMoments(classes)).add(f, yb)
        n = int(counts.sum())
        if n == 0:
            raise DetectorError("reference_loader yielded no batch; it must yield (images, labels) pairs")
        missing = [str(c) for c in torch.nonzero(counts == 0).flatten().tolist()]
        if missing:
            raise DetectorError(f"the reference set ({n} images) has no image of class {', '.join(missing)} of "
                                f"the model's {classes}; every class needs a mean")
        gaussians = {name: m.gaussians() for name, m in moments.items()}
        return {k: g[0] for k, g in gaussians.items()}, {k: g[1] for k, g in gaussians.items()}, n

    # -- features ---------------------------------------------------------------------------

    def _pooled(self, x: Tensor) -> dict[str, Tensor]:
        """(B, D) float64 features per block of the batch ``x`` (gradients as the caller has them)."""
        acts = activations(self.model, x)
        return {n: (acts[n].flatten(2).mean(2) if acts[n].dim() == 4 else acts[n]).double() for n in self._blocks}

    def _distances(self, f: Tensor, name: str) -> Tensor:
        """(B, C) squared Mahalanobis distances of the block's features f (B, D) to each class mean."""
        diff = f[:, None, :] - self.means[name]  # (B, C, D)
        return ((diff @ self.precisions[name]) * diff).sum(-1)

    def _signs(self, x: Tensor) -> list[Tensor]:
        """Per block, sign(grad_x D_l) (B, C, H, W) for the batch ``x``: a constant, and the step the
        deployed detector takes whatever the caller's modes (gradients off, relaxed decisions on,
        as in an adaptive attack); the model's parameter gradients are not touched."""
        with torch.enable_grad(), _evaluating(self.model), _argmax_decisions(self.model):
            x0 = x.detach().requires_grad_(True)
            pooled = self._pooled(x0)
            # each image's loss depends on that image only (eval mode), so one sum gives every row's gradient
            losses = [self._distances(pooled[n], n).min(1).values.sum() for n in self.feature_names]
            last = len(losses) - 1
            return [torch.autograd.grad(loss, x0, retain_graph=i < last)[0].sign() for i, loss in enumerate(losses)]

    def _scores(self, x: Tensor, signs: list[Tensor] | None, eps: float) -> Tensor:
        """(B, F) float64 ``M_l(x_hat_l)`` per block, differentiable w.r.t. ``x`` through the BPDA step;
        ``signs`` from :meth:`_signs` (None when eps is 0: no pre-processing)."""
        if eps == 0:
            pooled = self._pooled(x)
            return torch.stack([-self._distances(pooled[n], n).min(1).values for n in self.feature_names], 1)
        cols = []
        for name, sign in zip(self.feature_names, signs):
            step = (x.detach() - eps * sign).clamp(0, 1) - x.detach()  # towards the closest mean, a constant
            cols.append(-self._distances(self._block(x + step, name), name).min(1).values)
        return torch.stack(cols, 1)

    def _block(self, x: Tensor, name: str) -> Tensor:
        """(B, D) float64 features of one block: the forward pass stops at that block's layer."""
        if name == "fc.input":
            return self._pooled(x)[name]
        found: dict[str, Tensor] = {}

        def stop(_module, _inputs, output):
            found["out"] = output
            raise _Reached

        handle = self._modules_by_name[name].register_forward_hook(stop)
        try:
            self.model(x)
        except _Reached:
            pass
        finally:
            handle.remove()
        return F.relu(found["out"]).flatten(2).mean(2).double()  # as activations() keeps it: after ReLU

    def torch_features(self, x: Tensor) -> Tensor:
        """(B, F) float64 per-block confidences of one batch at the chosen magnitude, differentiable
        w.r.t. ``x`` (the pre-processing step a constant)."""
        eps = self._magnitude()
        return self._scores(x, self._signs(x) if eps > 0 else None, eps)

    def features(self, x: Tensor) -> np.ndarray:
        """(N, F) float64 per-block confidences at the chosen magnitude (eval mode; the pre-processing
        gradient is taken even where the caller disabled gradients)."""
        eps = self._magnitude()
        return self._features_at(x, (eps,))[0]

    def _features_at(self, x: Tensor, magnitudes: tuple[float, ...]) -> list[np.ndarray]:
        """(N, F) features of ``x`` at each magnitude; one sign-gradient per block and batch serves all."""
        _check_images(x, "x")
        out: list[list[np.ndarray]] = [[] for _ in magnitudes]
        with _evaluating(self.model):
            for xb in _batches(x, self.batch_size, self.model):
                signs = self._signs(xb) if max(magnitudes) > 0 else None
                with torch.no_grad():
                    for rows, eps in zip(out, magnitudes):
                        rows.append(self._scores(xb, signs, eps).cpu().numpy())
        return [np.concatenate(rows) for rows in out]

    def _magnitude(self) -> float:
        eps = self.params["magnitude"]
        if eps is None:
            raise DetectorError(f"detector {self.name!r} has no noise magnitude yet: fit chooses it on a validation "
                                f"part (>= 10 clean and >= 10 adversarial images), or pass magnitude=")
        return eps

    # -- fitting ----------------------------------------------------------------------------

    def select(self, fit: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor]):
        """Choose the magnitude among ``MAGNITUDES`` with the best validation ROC-AUC (the smallest
        on ties): ``params["magnitude"]`` and ``params["magnitude_auc"]`` (str(magnitude) -> AUC).
        A magnitude given to the constructor stays."""
        if not self._search:
            return None
        feats = [self._features_at(x, MAGNITUDES) for x in (*fit, *val)]  # 4 x one (N, F) per magnitude
        aucs = {str(eps): validation_auc(self._new_classifier(), (feats[0][i], feats[1][i]), (feats[2][i], feats[3][i]))
                for i, eps in enumerate(MAGNITUDES)}
        best = max(range(len(MAGNITUDES)), key=lambda i: aucs[str(MAGNITUDES[i])])
        self.params.update(magnitude=MAGNITUDES[best], magnitude_auc=aucs)
        return (feats[0][best], feats[1][best]), (feats[2][best], feats[3][best])


class _Reached(Exception):
    """Raised by a forward hook to end a forward pass at the layer a block score needs."""


class _ClassMoments:
    """One block's per-class counts and sums and the sum of outer products, in float64 about a
    fixed shift (the first batch's mean), so that the covariance keeps its digits when the
    features sit far from 0 (the covariance does not depend on the shift)."""

    def __init__(self, classes: int):
        self.classes = classes
        self.shift: Tensor | None = None

    def add(self, f: Tensor, y: Tensor) -> None:
        """Accumulate features f (B, D) float64 with labels y (B,)."""
        if self.shift is None:
            self.shift = f.mean(0)
            self.count = torch.zeros(self.classes, dtype=f.dtype, device=f.device)
            self.sums = f.new_zeros(self.classes, f.shape[1])  # (C, D)
            self.outer = f.new_zeros(f.shape[1], f.shape[1])  # (D, D) sum of x x^T
        f = f - self.shift
        self.count += torch.bincount(y, minlength=self.classes).to(f.dtype)
        self.sums.index_add_(0, y, f)
        self.outer += f.T @ f

    def gaussians(self) -> tuple[Tensor, Tensor]:
        """Class means (C, D) and the pseudo-inverse of ``(sum x x^T - sum_c n_c mu_c mu_c^T) / N``."""
        means = self.sums / self.count[:, None]  # about the shift
        cov = (self.outer - (self.count[:, None] * means).T @ means) / self.count.sum()
        return means + self.shift, torch.linalg.pinv(cov, hermitian=True)


def _stage_outputs(model: Network, probe: Tensor) -> list[str]:
    """The blocks: the last GatedConv of every run of equal output resolution, in forward order,
    then ``"fc.input"`` unless it equals the last block averaged over space."""
    with _evaluating(model), torch.no_grad():
        acts = activations(model, probe.to(model.mean.device))
    convs = [n for n, a in acts.items() if a.dim() == 4]
    blocks = [n for i, n in enumerate(convs) if i + 1 == len(convs) or acts[n].shape[2:] != acts[convs[i + 1]].shape[2:]]
    pooled_last = acts[blocks[-1]].flatten(2).mean(2) if blocks else None
    if pooled_last is None or pooled_last.shape != acts["fc.input"].shape or not torch.allclose(pooled_last, acts["fc.input"]):
        blocks.append("fc.input")
    return blocks


@contextmanager
def _argmax_decisions(model: Network) -> Iterator[None]:
    """Within the block, gated layers take their argmax decisions with zero gradient, as deployed,
    even inside ``models.relaxed_decisions``; their old setting after it."""
    layers = gated_convs(model)
    saved = [g.relaxed for g in layers]
    for g in layers:
        g.relaxed = False
    try:
        yield
    finally:
        for g, relaxed in zip(layers, saved):
            g.relaxed = relaxed


def _pairs(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, len(x), batch_size):
        yield x[i:i + batch_size], y[i:i + batch_size]


def _checked(pairs: Iterable, classes: int) -> Iterator[tuple[Tensor, Tensor]]:
    """The (images, labels) batches of ``pairs``, or a DetectorError naming the first bad one."""
    for i, batch in enumerate(pairs):
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise DetectorError(f"reference_loader must yield (images, labels) pairs; batch {i} is "
                                f"{type(batch).__name__}")
        xb, yb = batch
        _check_images(xb, f"reference_loader batch {i}: images")
        if not isinstance(yb, Tensor) or yb.shape != (len(xb),) or yb.dtype.is_floating_point:
            found = f"{tuple(yb.shape)} {yb.dtype}" if isinstance(yb, Tensor) else type(yb).__name__
            raise DetectorError(f"reference_loader batch {i}: labels must be ({len(xb)},) integers, got {found}")
        if int(yb.min()) < 0 or int(yb.max()) >= classes:
            raise DetectorError(f"reference_loader batch {i}: labels must be class indices in [0, {classes}), "
                                f"found {int(yb.min())}..{int(yb.max())}")
        yield xb, yb
