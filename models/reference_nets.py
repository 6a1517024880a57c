"""The CIFAR networks of the papers' released code, layer for layer, so that their checkpoints
load exactly (``gatescope import --from dynamic-pruning``; key layout in :mod:`models.official`).

- ``ref_vgg16`` / ``ref_vgg19``: VGG with BatchNorm and no max-pool after the last block; the
  reference's 2x2 average pool feeds one linear layer. At its 32x32 input the last feature map is
  2x2, so that pool is the global average pool :class:`~models.chain.ConvChain` takes. The first
  conv is not gated (the reference builds a decision head for it and never uses it).
- ``ref_resnet20`` / ``ref_resnet56``: the CIFAR ResNet with a 1x1 conv + BN projection shortcut
  where the shape changes; the decision unit reads the block input and gates conv1's output.
  That is gatescope's :class:`~models.resnet.ResNet` (the reference's 8x8 average pool is the
  global one at 32x32).

All four default to the papers' decision unit (``standardise=False``: ReLU, global average pool,
bias-free unit-norm linear, softmax); ``standardise`` stays an argument, recorded in model.json.
"""

from __future__ import annotations

from functools import partial

from .chain import ConvChain
from .registry import register_model
from .resnet import ResNet

# conv widths of the reference's ``defaultcfg``; "M" is a 2x2 max-pool after the conv before it
REF_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
REF_VGG19 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)

# the normalisation the reference code's CIFAR-10 loaders apply (transforms.Normalize)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

register_model("ref_vgg16")(partial(ConvChain, REF_VGG16, standardise=False))
register_model("ref_vgg19")(partial(ConvChain, REF_VGG19, standardise=False))
register_model("ref_resnet20")(partial(ResNet, 20, standardise=False))
register_model("ref_resnet56")(partial(ResNet, 56, standardise=False))
