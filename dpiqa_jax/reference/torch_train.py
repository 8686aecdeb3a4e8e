"""The authors' PyTorch training loop, for train-step parity checks. Dev only (imports torch).

What `train_dpiqa.py` / `train_student.py` of the DP-IQA release do per step, in fp32 (their fp16
autocast and GradScaler left out): `zero_grad(set_to_none=True)`, forward, MSE loss(es),
`backward`, `Adam.step` over `model.parameters()` (tensors without a gradient, the frozen VAE,
are skipped by Adam), and `MultiStepLR(gamma=0.2).step()` once per epoch. Inputs are contiguous
NCHW tensors, as their `ToTensor` produces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dpiqa_jax.reference.torch_models import TorchMBConv, TorchStudent, TorchTeacher

# The authors' MultiStepLR factor.
LR_GAMMA = 0.2

Batch = Mapping[str, np.ndarray]
LossFn = Callable[[torch.nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]
# Takes (name, array or None) pairs, the arrays possibly views of live tensors, and returns them
# as a dict of arrays that no longer change (copies, or files read back memory-mapped).
Keep = Callable[[Iterable[tuple[str, np.ndarray | None]]], dict[str, np.ndarray | None]]


@dataclasses.dataclass
class TorchTrainTrace:
    """What a torch run leaves for comparison, as numpy, keyed by torch parameter names.

    Attributes:
      losses: the loss of every step, in order.
      first_grads: every parameter's gradient after the first backward (None: no gradient).
      params, exp_avg, exp_avg_sq: parameters and Adam moments after the last step (moments only
        for parameters Adam updated).
      buffers: BatchNorm running statistics after the last step.
      learning_rates: the learning rate each step used.
      threads: torch's intra-op thread count.
    """

    losses: list[float]
    first_grads: dict[str, np.ndarray | None]
    params: dict[str, np.ndarray]
    exp_avg: dict[str, np.ndarray]
    exp_avg_sq: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    learning_rates: list[float]
    threads: int


def nchw(images: np.ndarray) -> torch.Tensor:
    """[B, H, W, C] numpy -> a contiguous [B, C, H, W] tensor (channels-last CPU kernels differ)."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def teacher_loss(model: TorchTeacher, batch: Mapping[str, torch.Tensor],
                 prompts: torch.Tensor) -> torch.Tensor:
    """The teacher's MSE between its score and MOS / 100; prompts [K, D]."""
    score, _ = model(batch["image"], prompts)
    return F.mse_loss(score[:, 0], batch["mos_normalized"])


def student_loss(model: TorchStudent, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """MSE(score, MOS / 100) + MSE(map, teacher map), weighted 1:1 as the authors do."""
    score, quality_map = model(batch["image"])
    return (F.mse_loss(score, batch["mos_normalized"])
            + F.mse_loss(quality_map, batch["teacher_map"]))


def torch_batch(batch: Batch) -> dict[str, torch.Tensor]:
    """Our batch layout (NHWC images and maps) -> the authors' (contiguous NCHW)."""
    converted = {}
    for name, value in batch.items():
        converted[name] = nchw(value) if value.ndim == 4 else torch.from_numpy(value)
    return converted


def disable_stochastic_depth(model: torch.nn.Module) -> int:
    """Sets every MBConv's drop rate to 0; returns how many blocks had one."""
    blocks = [m for m in model.modules() if isinstance(m, TorchMBConv)]
    for block in blocks:
        block.stochastic_depth_prob = 0.0
    return sum(1 for _ in blocks)


def _view(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.detach().numpy()


def keep_copies(pairs: Iterable[tuple[str, np.ndarray | None]]) -> dict[str, np.ndarray | None]:
    return {name: None if array is None else array.copy() for name, array in pairs}


def train_torch(model: torch.nn.Module, loss_fn: LossFn, batches: Sequence[Batch], *,
                learning_rate: float, milestone_epochs: Sequence[int], steps_per_epoch: int,
                adam_eps: float = 1e-8, keep: Keep = keep_copies) -> TorchTrainTrace:
    """Trains `model` in place over `batches` as the authors' scripts do (see module docstring).

    Args:
      model: in training mode afterwards (BatchNorm uses batch statistics); parameters that must
        not train carry `requires_grad=False`.
      loss_fn: (model, batch of tensors) -> scalar loss.
      batches: our layout: `image` [B, H, W, 3], `mos_normalized` [B], optional `teacher_map`
        [B, m, m, c].
      learning_rate, milestone_epochs: the Adam learning rate and MultiStepLR milestones.
      steps_per_epoch: optimizer steps between two `scheduler.step()` calls.
      adam_eps: Adam's epsilon (torch's default is the authors').
      keep: how the trace's arrays are stored, one at a time as they are produced (a full-size
        model's copies would not fit in memory beside it).
    """
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, eps=adam_eps)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestone_epochs),
                                                     gamma=LR_GAMMA)
    losses, learning_rates, first_grads = [], [], {}
    for step, batch in enumerate(batches):
        learning_rates.append(optimizer.param_groups[0]["lr"])
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, torch_batch(batch))
        loss.backward()
        if step == 0:
            first_grads = keep((name, _view(p.grad)) for name, p in model.named_parameters())
        optimizer.step()
        losses.append(float(loss.detach()))
        if (step + 1) % steps_per_epoch == 0:
            scheduler.step()
    named = dict(model.named_parameters())
    moments = {name: optimizer.state[p] for name, p in named.items() if p in optimizer.state}
    return TorchTrainTrace(
        losses=losses, first_grads=first_grads,
        params=keep((name, _view(p)) for name, p in named.items()),
        exp_avg=keep((name, _view(s["exp_avg"])) for name, s in moments.items()),
        exp_avg_sq=keep((name, _view(s["exp_avg_sq"])) for name, s in moments.items()),
        buffers=keep((name, _view(b)) for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var"))),
        learning_rates=learning_rates, threads=torch.get_num_threads())
