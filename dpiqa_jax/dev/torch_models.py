"""PyTorch references of the DP-IQA teacher and student, for parity tests and the speed benchmark.

Dev only: this module imports torch and diffusers (requirements-dev.txt), which running and
training dpiqa_jax never need. Layout is NCHW, as in the authors' code.

* `TorchQFD`, `TorchTextAdapter`, `TorchSELayer`: the authors' `iqa_models/dpiqa.py` layers with
  configurable widths (their unused `bnc1` and `classifier_dist` included, so state dicts match).
* `TorchTeacher`: the authors' `DPIQA.forward` assembled from diffusers' `AutoencoderKL`,
  `UNet2DConditionModel` and `FullAdapter` (posterior mean instead of their sample).
* `TorchEfficientNet`: torchvision's EfficientNet v1 structure and module names, built from one of
  our `EfficientNetConfig`s (torchvision itself cannot load beside the CPU torch of this project).
* `TorchStudent`: the authors' student head on an EfficientNet's `features`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers.models.adapter import FullAdapter

from dpiqa_jax.models.efficientnet import BlockConfig, EfficientNetConfig, efficientnet_config
from dpiqa_jax.models.qfd import QFDConfig
from dpiqa_jax.models.student import StudentConfig
from dpiqa_jax.models.teacher import TeacherConfig
from dpiqa_jax.sd.unet import UNetConfig
from dpiqa_jax.sd.vae import VAEConfig

# Scale of the random perturbation `build_torch_teacher` adds to every weight.
_PERTURBATION = 0.05
TORCHVISION = "torchvision"
REFERENCE = "reference"
LITE_PACKAGE = "efficientnet_lite_pytorch"

# --------------------------------------------------------------------------- QFD, text adapter


class TorchSELayer(torch.nn.Module):
    def __init__(self, channel: int, reduction: int):
        super().__init__()
        self.fc = torch.nn.Sequential(
            torch.nn.Linear(channel, channel // reduction, bias=False), torch.nn.ReLU(),
            torch.nn.Linear(channel // reduction, channel, bias=False), torch.nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class TorchQFD(torch.nn.Module):
    """The authors' QualityFeatureDecoder with configurable widths, incl. its unused layers."""

    def __init__(self, cfg: QFDConfig):
        super().__init__()
        self.map_size = cfg.map_size
        for i, channels in enumerate(cfg.level_channels, start=1):
            setattr(self, f"conv{i}", torch.nn.Conv2d(channels, cfg.hidden, 3, padding=1))
            setattr(self, f"se{i}", TorchSELayer(cfg.hidden, cfg.se_reduction))
        self.fuse_conv = torch.nn.Conv2d(cfg.hidden * 4, cfg.hidden, 3, padding=1)
        self.se_fuse = TorchSELayer(cfg.hidden, cfg.se_reduction)
        self.bnc1 = torch.nn.BatchNorm2d(cfg.hidden)
        widths = (cfg.hidden,) + cfg.score_channels
        for i in range(1, 4):
            setattr(self, f"conv_score{i}", torch.nn.Conv2d(widths[i - 1], widths[i], 1))
        self.fc1 = torch.nn.Linear(cfg.score_channels[-1] * cfg.map_size ** 2, cfg.head_hidden)
        self.fc2 = torch.nn.Linear(cfg.head_hidden, cfg.head_hidden)
        self.fc3 = torch.nn.Linear(cfg.head_hidden, 1)
        self.classifier_dist = torch.nn.Linear(cfg.head_hidden, 24)

    def forward(self, x1, x2, x3, x4):
        """x1..x4: up-block outputs, the LAST up block first -> (score [B, 1], map [B, C, m, m])."""
        levels = []
        for i, x in enumerate((x1, x2, x3, x4), start=1):
            x = F.interpolate(x, size=(self.map_size,) * 2, mode="bicubic", align_corners=False)
            levels.append(getattr(self, f"se{i}")(getattr(self, f"conv{i}")(x)))
        fused = self.se_fuse(self.fuse_conv(torch.cat(levels, dim=1)))
        score_map = torch.relu(self.conv_score1(fused))
        score_map = torch.relu(self.conv_score2(score_map))
        score_map = torch.relu(self.conv_score3(score_map))
        score = torch.relu(self.fc1(score_map.view(score_map.size(0), -1)))
        score = self.fc3(torch.relu(self.fc2(score)))
        return score, score_map


class TorchTextAdapter(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.GELU(),
                                      torch.nn.Linear(dim, dim))

    def forward(self, texts, gamma):
        return texts + gamma * self.fc(texts)


# --------------------------------------------------------------------------- teacher


class TorchTeacher(torch.nn.Module):
    """The authors' `DPIQA.forward` from diffusers parts, with the posterior mean as latent.

    VAE latent x scaling factor (the VAE is frozen: no gradient, as in their training), text
    adapter context broadcast to the batch, FullAdapter features injected as T2I residuals
    (`down_intrablock_additional_residuals`), up-block outputs captured by forward hooks, QFD on
    them (last up block first, the authors' argument order).
    """

    def __init__(self, vae: diffusers.AutoencoderKL, unet: diffusers.UNet2DConditionModel,
                 img_adapter: FullAdapter, text_adapter: TorchTextAdapter, gamma: torch.Tensor,
                 qfd: TorchQFD):
        super().__init__()
        self.vae = vae
        self.unet = unet
        self.img_adapter = img_adapter
        self.text_adapter = text_adapter
        self.gamma = torch.nn.Parameter(gamma)
        self.qfd = qfd
        self._up_features: list[torch.Tensor] = []
        for block in unet.up_blocks:
            block.register_forward_hook(self._capture_up_feature)

    def _capture_up_feature(self, _module, _inputs, output: torch.Tensor) -> None:
        self._up_features.append(output)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [0, 1] -> VAE posterior mean x scaling factor [B, 4, H/8, W/8]."""
        with torch.no_grad():
            return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    def forward(self, images: torch.Tensor, prompts: torch.Tensor):
        """images [B, 3, H, W] in [0, 1], prompts [K, D] -> (score [B, 1], map [B, C, m, m])."""
        latents = self.encode_latents(images)
        context = self.text_adapter(prompts, self.gamma)[None].expand(len(images), -1, -1)
        self._up_features.clear()
        # diffusers pops the residuals from the list it is given: a fresh list per call.
        self.unet(latents, 1, encoder_hidden_states=context,
                  down_intrablock_additional_residuals=list(self.img_adapter(images)))
        features, self._up_features = self._up_features, []
        return self.qfd(*features[::-1])

    def trainable_parameters(self) -> Iterator[torch.nn.Parameter]:
        """What the authors train: everything but the VAE."""
        return (p for name, p in self.named_parameters() if not name.startswith("vae."))


def _perturbed(module: torch.nn.Module) -> torch.nn.Module:
    """Default inits leave norms at 1/0 and some layers at zero; perturb so every tensor matters.

    The noise is relative to each tensor's own scale: a fixed 0.05 on every weight multiplies
    the activations by ~0.05 sqrt(fan_in) per layer, which at SD 1.5's widths (fan_in up to 11520)
    drives a random teacher's loss to 1e12 and its Adam moments to fp32 overflow.
    """
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * _perturbation_scale(p))
    return module.eval()


def _perturbation_scale(p: torch.Tensor) -> float:
    """_PERTURBATION x the tensor's RMS; for an all-zero tensor, x 1/sqrt(fan_in) (1-D: x 1)."""
    rms = float(p.detach().double().square().mean().sqrt())
    if rms > 0:
        return _PERTURBATION * rms
    return _PERTURBATION / (p[0].numel() ** 0.5 if p.ndim > 1 else 1.0)


def _check_same_architecture(config: TeacherConfig, unet_config: Mapping[str, Any],
                             vae_config: Mapping[str, Any]) -> None:
    if UNetConfig.from_diffusers(unet_config) != config.unet:
        raise ValueError(f"the diffusers UNet config {dict(unet_config)} is not the teacher's "
                         f"UNet {config.unet}")
    if VAEConfig.from_diffusers(vae_config) != config.vae:
        raise ValueError(f"the diffusers VAE config {dict(vae_config)} is not the teacher's VAE "
                         f"{config.vae}")


def build_torch_teacher(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any],
                        config: TeacherConfig, *, seed: int = 0, perturb: bool = True,
                        trainable: bool = False,
                        device: torch.device | str = "cpu") -> TorchTeacher:
    """A random-weight torch teacher of the architecture `config` describes.

    Args:
      unet_config, vae_config: the diffusers configs (`unet/config.json`, `vae/config.json`
        dicts) of `config.unet` and `config.vae`.
      config: the teacher; its image adapter, QFD and text width size the other parts.
      seed: torch seed of the whole construction.
      perturb: add N(0, 0.05^2) to every weight and random BatchNorm statistics to the unused
        `bnc1`, so that no tensor is trivial (parity tests); off for speed measurements.
      trainable: gradients for everything but the VAE (the authors' training) when True; none at
        all when False (a reference to compare outputs with).
      device: where the weights are created (on a GPU: no CPU initialisation of 1B weights).
    """
    _check_same_architecture(config, unet_config, vae_config)
    with torch.device(device):
        teacher = _random_teacher(unet_config, vae_config, config, seed, perturb)
    teacher.requires_grad_(False)
    if trainable:
        for parameter in teacher.trainable_parameters():
            parameter.requires_grad_(True)
    return teacher


def _random_teacher(unet_config: Mapping[str, Any], vae_config: Mapping[str, Any],
                    config: TeacherConfig, seed: int, perturb: bool) -> TorchTeacher:
    keep = _perturbed if perturb else (lambda module: module.eval())
    torch.manual_seed(seed)
    qfd = TorchQFD(config.qfd)
    if perturb:
        with torch.no_grad():
            qfd.bnc1.running_mean.normal_()
            qfd.bnc1.num_batches_tracked.fill_(7)
    adapter = config.image_adapter
    return TorchTeacher(
        vae=keep(diffusers.AutoencoderKL(**vae_config)),
        unet=keep(diffusers.UNet2DConditionModel(**unet_config)),
        img_adapter=keep(FullAdapter(in_channels=adapter.in_channels,
                                     channels=list(adapter.channels),
                                     num_res_blocks=adapter.num_res_blocks,
                                     downscale_factor=adapter.downscale_factor)),
        text_adapter=keep(TorchTextAdapter(config.text_dim)),
        gamma=(torch.randn(config.text_dim) * 0.5 if perturb
               else torch.full((config.text_dim,), config.gamma_init)),
        qfd=keep(qfd),
    )


# --------------------------------------------------------------------------- EfficientNet
# torchvision's EfficientNet v1 structure and module names (Conv2dNormActivation, MBConv,
# SqueezeExcitation, features / avgpool / classifier), built from one of our configs.


def torch_conv_bn(cin: int, cout: int, kernel: int, config: EfficientNetConfig, *,
                  stride: int = 1, groups: int = 1, activate: bool = True) -> torch.nn.Sequential:
    layers = [torch.nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups,
                              bias=False),
              torch.nn.BatchNorm2d(cout, eps=config.bn_eps, momentum=config.bn_momentum)]
    if activate:
        layers.append(torch.nn.SiLU())
    return torch.nn.Sequential(*layers)


class TorchSqueezeExcitation(torch.nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc1 = torch.nn.Conv2d(channels, squeeze, 1)
        self.fc2 = torch.nn.Conv2d(squeeze, channels, 1)
        self.activation = torch.nn.SiLU()
        self.scale_activation = torch.nn.Sigmoid()

    def forward(self, x):
        scale = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(scale) * x


class TorchMBConv(torch.nn.Module):
    def __init__(self, block: BlockConfig, config: EfficientNetConfig):
        super().__init__()
        expanded = block.expanded_channels
        layers = []
        if expanded != block.in_channels:
            layers.append(torch_conv_bn(block.in_channels, expanded, 1, config))
        layers.append(torch_conv_bn(expanded, expanded, block.kernel_size, config,
                                    stride=block.stride, groups=expanded))
        layers.append(TorchSqueezeExcitation(expanded, max(1, block.in_channels // 4)))
        layers.append(torch_conv_bn(expanded, block.out_channels, 1, config, activate=False))
        self.block = torch.nn.Sequential(*layers)
        self.use_res_connect = block.has_residual
        self.stochastic_depth_prob = block.stochastic_depth_prob

    def forward(self, x):
        result = self.block(x)
        if not self.use_res_connect:
            return result
        if self.training and self.stochastic_depth_prob > 0:
            # torchvision's StochasticDepth(mode="row"): drop whole samples, rescale the kept.
            survival = 1.0 - self.stochastic_depth_prob
            keep = torch.empty(len(x), 1, 1, 1, dtype=x.dtype, device=x.device)
            result = result * keep.bernoulli_(survival) / survival
        return result + x


def _check_torchvision_family(config: EfficientNetConfig) -> None:
    if (config.activation, config.squeeze_excitation, config.padding) != ("silu", True,
                                                                          "symmetric"):
        raise ValueError(f"TorchEfficientNet builds torchvision's B0-B7 structure (SiLU, SE, "
                         f"symmetric padding); {config.name!r} is not of that family")


class TorchEfficientNet(torch.nn.Module):
    def __init__(self, config: EfficientNetConfig, num_classes: int):
        super().__init__()
        _check_torchvision_family(config)
        layers = [torch_conv_bn(3, config.stem_channels, 3, config, stride=2)]
        for blocks in config.blocks():
            layers.append(torch.nn.Sequential(*[TorchMBConv(b, config) for b in blocks]))
        layers.append(torch_conv_bn(config.stages[-1].out_channels, config.head_channels, 1,
                                    config))
        self.features = torch.nn.Sequential(*layers)
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(config.dropout_rate),
                                              torch.nn.Linear(config.head_channels, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# --------------------------------------------------------------------------- student


class TorchStudent(torch.nn.Module):
    """The authors' student: `base_model.features` -> `conv_transpose` (k3, s2, p1, output
    padding 1) -> ReLU -> nearest resize = quality map -> flatten (NCHW) -> `fc1`..`fc3`."""

    def __init__(self, features: torch.nn.Module, feature_channels: int, config: StudentConfig):
        super().__init__()
        self.map_size = config.map_size
        self.base_model = torch.nn.Module()
        self.base_model.features = features
        self.conv_transpose = torch.nn.ConvTranspose2d(feature_channels, config.map_channels, 3,
                                                       stride=2, padding=1, output_padding=1)
        self.fc1 = torch.nn.Linear(config.map_channels * config.map_size ** 2, config.hidden)
        self.fc2 = torch.nn.Linear(config.hidden, config.hidden)
        self.fc3 = torch.nn.Linear(config.hidden, 1)

    def forward(self, images: torch.Tensor):
        """images [B, 3, H, W] in [0, 1] -> (score [B], quality map [B, C, m, m])."""
        features = self.base_model.features(images)
        quality_map = F.interpolate(F.relu(self.conv_transpose(features)),
                                    size=(self.map_size, self.map_size), mode="nearest")
        h = F.relu(self.fc1(torch.flatten(quality_map, 1)))
        return self.fc3(F.relu(self.fc2(h))).squeeze(1), quality_map


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def build_torch_student(config: StudentConfig, *, seed: int = 0, prefer_torchvision: bool = True,
                        device: torch.device | str = "cpu") -> tuple[TorchStudent, str]:
    """A random-weight torch student, created on `device`; returns it and which backbone code
    built it: torchvision's `efficientnet_{backbone}` when torchvision is importable and
    `prefer_torchvision` ('torchvision'), else `TorchEfficientNet` ('reference'); a Lite backbone
    always comes from `efficientnet_lite_pytorch` ('efficientnet_lite_pytorch').
    """
    torch.manual_seed(seed)
    with torch.device(device):
        return _random_student(config, prefer_torchvision)


class _LiteFeatures(torch.nn.Module):
    """The `efficientnet_lite_pytorch` EfficientNet-Lite (the code its weights come with), stem to
    head conv."""

    def __init__(self, name: str):
        super().__init__()
        # pylint: disable=import-outside-toplevel  # a dev requirement, for Lite students only
        from efficientnet_lite_pytorch import EfficientNet
        self.model = EfficientNet.from_name(f"efficientnet-{name}")

    def forward(self, x):
        return self.model.extract_features(x)


def _random_student(config: StudentConfig, prefer_torchvision: bool) -> tuple[TorchStudent, str]:
    backbone = efficientnet_config(config.backbone)
    if backbone.activation == "relu6":
        return (TorchStudent(_LiteFeatures(config.backbone), backbone.head_channels, config),
                LITE_PACKAGE)
    if prefer_torchvision and torchvision_available():
        import torchvision  # pylint: disable=import-outside-toplevel  # optional, see above
        build = getattr(torchvision.models, f"efficientnet_{config.backbone}", None)
        if build is None:
            raise ValueError(f"torchvision has no efficientnet_{config.backbone}")
        model = build(weights=None)
        return TorchStudent(model.features, backbone.head_channels, config), TORCHVISION
    features = TorchEfficientNet(backbone, num_classes=1).features
    return TorchStudent(features, backbone.head_channels, config), REFERENCE
