"""The authors' `StudentEfficientNet` and their ONNX export, rebuilt for tests (dev only: torch).

Their model (`iqa_models/student.py`) is a whole torchvision EfficientNet with `avgpool` and
`classifier` set to Identity, so its forward flattens the features and views them back to
[B, C, h, w] before `ConvTranspose2d(C, 8, 3, 2, 1, 1)` -> ReLU -> nearest resize to 64 -> flatten
-> three Linear layers; it returns (score [B, 1], map [B, 8, 64, 64]). The backbone here is
`TorchEfficientNet`, torchvision's structure and module names (torchvision itself cannot load
beside the CPU torch of this project). Layout is NCHW.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dpiqa_jax.dev.torch_models import TorchEfficientNet
from dpiqa_jax.models.efficientnet import efficientnet_config

AUTHORS_OPSET = 17


class TorchAuthorsStudent(torch.nn.Module):
    """The authors' `StudentEfficientNet` for a torchvision-family backbone and input side."""

    def __init__(self, backbone: str, image_size: int, *, map_size: int = 64, hidden: int = 512,
                 resize_by_scale: bool = False):
        """`resize_by_scale`: `interpolate` by the factor map_size / (2 x feature side) (an ONNX
        Resize with `scales`) instead of to the size (`sizes`, the authors' code)."""
        super().__init__()
        self.resize_by_scale = resize_by_scale
        config = efficientnet_config(backbone)
        self.channels = config.head_channels
        self.feature_side = -(-image_size // 32)
        self.map_size = map_size
        self.base_model = TorchEfficientNet(config, num_classes=1)
        self.base_model.avgpool = torch.nn.Identity()
        self.base_model.classifier = torch.nn.Identity()
        self.conv_transpose = torch.nn.ConvTranspose2d(self.channels, 8, 3, stride=2, padding=1,
                                                       output_padding=1)
        self.flatten = torch.nn.Flatten()
        self.fc1 = torch.nn.Linear(8 * map_size * map_size, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.fc3 = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, S, S] in [0, 1] -> (score [B, 1], map [B, 8, map_size, map_size])."""
        x = self.base_model(x)
        x = x.view(x.shape[0], self.channels, self.feature_side, self.feature_side)
        x = torch.relu(self.conv_transpose(x))
        if self.resize_by_scale:
            feature_map = F.interpolate(x, scale_factor=self.map_size / (2 * self.feature_side),
                                        mode="nearest")
        else:
            feature_map = F.interpolate(x, size=(self.map_size, self.map_size), mode="nearest")
        x = torch.relu(self.fc1(self.flatten(feature_map)))
        x = torch.relu(self.fc2(x))
        return self.fc3(x), feature_map


def randomize_batch_norms(model: torch.nn.Module, seed: int,
                          calibration_images: torch.Tensor) -> torch.nn.Module:
    """Random BatchNorm affine parameters, then running statistics measured on
    `calibration_images` [N, 3, S, S] (one training-mode pass, stochastic depth off).

    Random statistics alone would leave a deep random network's output nearly the same for every
    image; measured ones keep each layer normalised, so the scores depend on the image.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    blocks = [m for m in model.modules() if hasattr(m, "stochastic_depth_prob")]
    depth_probs = [block.stochastic_depth_prob for block in blocks]
    momenta = [norm.momentum for norm in norms]
    with torch.no_grad():
        for norm in norms:
            norm.weight.copy_(torch.rand(norm.weight.shape, generator=generator) * 0.5 + 0.75)
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=generator) * 0.1)
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: after one pass, that batch's statistics
        for block in blocks:
            block.stochastic_depth_prob = 0.0
        model.train()
        model(calibration_images)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    for block, prob in zip(blocks, depth_probs):
        block.stochastic_depth_prob = prob
    return model.eval()


def export_like_the_authors(model: torch.nn.Module, path: str, image_size: int) -> None:
    """torch's TorchScript exporter in eval mode, as the authors' file was made: opset 17, input
    `input`, outputs `score` and `map`, a dynamic batch axis (BatchNorms folded by the exporter)."""
    batch = {0: "batch"}
    torch.onnx.export(model.eval(), (torch.rand(1, 3, image_size, image_size),), path,
                      dynamo=False, opset_version=AUTHORS_OPSET, input_names=["input"],
                      output_names=["score", "map"],
                      dynamic_axes={"input": batch, "score": batch, "map": batch})
