"""The re-id networks: RGA-Net (ResNet-50 with an RGA module after each stage, BNNeck) and HA-CNN
on rga_ops' modules, the ResNet-50 trunk, and torchreid's HA-CNN computed as torchreid does (the
reference). Their state_dicts are the original implementations'."""

from .hacnn import HACNN
from .reference_hacnn import ReferenceHACNN
from .resnet import ResNet50, load_imagenet_weights
from .rganet import RGANet

__all__ = ["HACNN", "RGANet", "ReferenceHACNN", "ResNet50", "load_imagenet_weights"]
