"""The training recipes of the `dino` encoder: every hyperparameter's value, by recipe.

A `dino` instance names a recipe and may set any of these keys as a parameter of its
own (declared, with its meaning and range, in `DINOEncoder.Params`); the keys it leaves
out take the recipe's value.
"""

from __future__ import annotations

from typing import Any

# The paper: DINO's ImageNet defaults for ViT-S/16 at 224 px (the paper's training section).
PAPER: dict[str, Any] = {
    "arch": "vit_small_patch16_224",
    "img_size": 224,
    "patch_size": 16,
    "model_kwargs": {},
    "out_dim": 65536,
    "hidden_dim": 2048,
    "bottleneck_dim": 256,
    "head_layers": 3,
    "norm_last_layer": True,
    "momentum_teacher": 0.996,
    "teacher_temp": 0.04,
    "warmup_teacher_temp": 0.04,
    "warmup_teacher_temp_epochs": 0,
    "student_temp": 0.1,
    "center_momentum": 0.9,
    "lr": 5e-4,  # per 256 images: the learning rate is lr * train_batch_size / 256
    "min_lr": 1e-6,
    "warmup_epochs": 10,
    "weight_decay": 0.04,
    "weight_decay_end": 0.4,
    "clip_grad": 3.0,
    "drop_path": 0.1,
    "freeze_last_layer": 1,
    "train_batch_size": 512,  # global, over all processes
    "compile": False,  # torch.compile the student and the teacher
    "epochs": 100,
    "steps": None,  # total steps; default epochs x steps_per_epoch
    "dataset_size": 1_300_000,  # images per epoch (the paper caps its training sets at 1.3M)
    "steps_per_epoch": None,  # default dataset_size // train_batch_size
    "source_size": 256,  # images are rendered / loaded at this size, then cropped
    "global_crops_scale": [0.4, 1.0],
    "local_crops_number": 8,
    "local_crop_size": 96,
    "local_crops_scale": [0.05, 0.4],
    "blur_sigma": [0.1, 2.0],
    "blur_sigma_scale": None,  # default img_size / 224
    "data_seed": None,  # default seed
}

# A CPU recipe (about 2.5 minutes on 2 cores): a 4-block ViT-tiny (width 192, 3 heads) at
# 32 px with patch 8, a small head, 4 local crops of 16 px, 4096 images rendered once at
# 96 px (crops are area-downsampled from them) and kept in memory, 5 epochs (320 steps of
# 64), teacher momentum 0.99 for the short schedule. It beats the same architecture at
# random init on the digits kNN task (docs/encoders.md, "Acceptance").
TINY: dict[str, Any] = {
    **PAPER,
    "arch": "vit_tiny_patch16_224",
    "img_size": 32,
    "patch_size": 8,
    "model_kwargs": {"depth": 4},
    "out_dim": 1024,
    "hidden_dim": 512,
    "bottleneck_dim": 128,
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_epochs": 1,
    "weight_decay_end": 0.1,
    "drop_path": 0.0,
    "train_batch_size": 64,
    "epochs": 5,
    "momentum_teacher": 0.99,
    "dataset_size": 4096,
    "source_size": 96,
    "local_crops_number": 4,
    "local_crop_size": 16,
}

RECIPES: dict[str, dict[str, Any]] = {"paper": PAPER, "tiny": TINY}

# Steps between checkpoints when `checkpoint_every` is not set.
DEFAULT_CHECKPOINT_EVERY = {"paper": 1000, "tiny": 100}
