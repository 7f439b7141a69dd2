"""The networks and the loss of DINO (Caron et al. 2021), as in DINO's `vision_transformer.py`,
`main_dino.py` and `utils.py`: the projection head with its weight-normalised last
layer, the multi-crop wrapper, the self-distillation loss with centring and a teacher
temperature warm-up, the cosine schedules, AdamW's parameter groups and DINO's
per-parameter gradient clipping.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class WeightNormLinear(nn.Module):
    """Linear layer without bias, weight = g * v / ||v|| per output unit.

    The same parametrisation and parameter names (`weight_g`, `weight_v`) as DINO's
    `nn.utils.weight_norm(nn.Linear(...))` last layer.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        linear = nn.Linear(in_dim, out_dim, bias=False)
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)
        return F.linear(x, weight)


class SampleDropPath(nn.Module):
    """timm's `DropPath` (each sample's residual branch dropped with probability p, the
    kept ones scaled by 1 / (1 - p)) with p held in a tensor. Compiled code specialises
    on a Python number, so blocks whose probabilities differ would each be compiled; with
    the probability a tensor, one compiled block serves them all."""

    def __init__(self, drop_prob: float, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.register_buffer("keep", torch.tensor(1.0 - drop_prob, device=device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        kept = torch.rand(shape, device=x.device) < self.keep
        return x * (kept / self.keep).to(x.dtype)


class DINOHead(nn.Module):
    """MLP (nlayers, GELU) -> bottleneck -> L2 normalise -> weight-normalised last layer."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3, norm_last_layer: bool = True
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        # DINO draws these from a normal truncated at +-2, which at std 0.02 lies 100 std
        # out and never binds: a plain normal is the same distribution. It is also the same
        # draw on every torch release, where `trunc_normal_` changed how it samples (2.14
        # rejection-samples from `normal_`, which it equals; 2.11 inverted a uniform draw).
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2)
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Backbone on each run of same-resolution crops (one forward per resolution), the
    CLS features concatenated, then the head on all of them at once."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        outputs, start = [], 0
        sizes = [c.shape[-1] for c in crops]
        while start < len(crops):
            end = start
            while end < len(crops) and sizes[end] == sizes[start]:
                end += 1
            outputs.append(self.backbone(torch.cat(list(crops[start:end]))))
            start = end
        return self.head(torch.cat(outputs))


class DINOLoss(nn.Module):
    """Cross-entropy between the teacher's centred, sharpened softmax of the global crops
    and the student's softmax of every other crop; updates the centre (EMA, all ranks)."""

    def __init__(
        self, out_dim: int, ncrops: int, warmup_teacher_temp: float, teacher_temp: float, warmup_teacher_temp_epochs: int,
        epochs: int, student_temp: float = 0.1, center_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.ncrops = ncrops
        self.register_buffer("center", torch.zeros(1, out_dim))
        warm = min(warmup_teacher_temp_epochs, epochs)
        self.teacher_temp_schedule = np.concatenate(
            (np.linspace(warmup_teacher_temp, teacher_temp, warm), np.ones(max(epochs - warm, 1)) * teacher_temp)
        )

    def forward(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        loss = self.cross_entropy(student_output, teacher_output, epoch)
        self.update_center(teacher_output)
        return loss

    def cross_entropy(self, student_output: torch.Tensor, teacher_output: torch.Tensor, epoch: int) -> torch.Tensor:
        """The loss against the current centre, which it leaves as it is."""
        student_out = (student_output / self.student_temp).chunk(self.ncrops)
        temp = float(self.teacher_temp_schedule[min(epoch, len(self.teacher_temp_schedule) - 1)])
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1).detach().chunk(2)
        total, terms = student_output.new_zeros(()), 0
        for iq, q in enumerate(teacher_out):
            for v in range(len(student_out)):
                if v == iq:
                    continue  # the same view for teacher and student is skipped
                total = total + torch.sum(-q * F.log_softmax(student_out[v], dim=-1), dim=-1).mean()
                terms += 1
        return total / terms

    @torch.no_grad()
    def update_center(self, teacher_output: torch.Tensor) -> None:
        batch_center = teacher_output.sum(dim=0, keepdim=True)
        count = torch.full((), float(len(teacher_output)), device=teacher_output.device)  # made there: no host copy
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(batch_center)
            torch.distributed.all_reduce(count)
        batch_center = batch_center / count
        self.center.mul_(self.center_momentum).add_(batch_center * (1 - self.center_momentum))


def cosine_schedule(base: float, final: float, total: int, warmup: int = 0, warmup_start: float = 0.0) -> np.ndarray:
    """DINO's `cosine_scheduler`, per step: linear warm-up, then cosine from base to final."""
    warmup = min(warmup, total)
    head = np.linspace(warmup_start, base, warmup) if warmup > 0 else np.array([])
    steps = np.arange(total - warmup)
    tail = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(len(steps), 1)))
    return np.concatenate((head, tail))


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Weight decay on weights only: biases and 1-d parameters (norms) are not decayed."""
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (not_regularized if name.endswith(".bias") or param.ndim == 1 else regularized).append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> None:
    """DINO's clipping: each parameter's gradient norm separately to at most `clip`.

    The norms and scalings run as multi-tensor operations (a few kernels on a GPU, not
    five per parameter), with the same arithmetic as clipping one parameter at a time."""
    grads = [param.grad.detach() for param in model.parameters() if param.grad is not None]
    if not grads:
        return
    norms = torch.stack(torch._foreach_norm(grads, 2))
    coefs = (clip / (norms + 1e-6)).clamp_(max=1.0)
    torch._foreach_mul_(grads, list(coefs.unbind()))
