"""Linear probes on frozen features (the paper's Table 6).

Two protocols (param `protocol`):

`logistic` (default): scikit-learn multinomial logistic regression (lbfgs, tol 1e-4,
`max_iter`; deterministic, no random state) on the cached frozen global features
(`ctx.embed_split`), standardised with the train split's mean and standard deviation.
The inverse regularisation C is chosen from `cs` on a held-out `val_fraction` (20%) of
train (stratified where every class allows it, seed `seed`): the smallest C whose
validation accuracy is within one validation sample (1 / n_val) of the best, so that a
near-tie decided by floating-point rounding cannot flip the choice between machines
(`select_c`). The probe is then refitted on all of train with that C and scored once on
test. Records: top1 (headline, with its per-image `outcomes`), top5 (when there are at
least 5 classes), val_top1 per C, and the selected C.

`dino`: DINO's `eval_linear.py`. Features = the CLS token of each of the last
`n_last_blocks` (4) transformer blocks, each through the final norm, concatenated
(plus the final block's mean patch token if `avgpool_patchtokens`), from a frozen ViT;
a linear layer (weights N(0, 0.01), bias 0) trained with SGD, momentum 0.9, no weight
decay, lr = `lr` (0.001) x `batch_size` (1024, DINO's 8 x 128) / 256, cosine schedule
to 0 over `epochs` (100), cross-entropy. Train images: RandomResizedCrop (scale 0.08-1,
ratio 3/4-4/3, bilinear) to the split's image size + horizontal flip, drawn afresh
every epoch from the decoded image (deterministic per seed, epoch and item); test
images: the split's evaluation preprocessing (resize 256 + centre crop 224 for image
files). The headline is the accuracy after the last epoch; DINO's log reports the
maximum over epochs on the evaluation set, which is selection on test, so it is not
computed. An encoder without ViT blocks (no `model.blocks`) is probed on its
`embed` features with the same recipe, and its records say so (`features: embed`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from harness.hookspecs import hookimpl
from harness.kinds import Task
from harness.results.store import pack_outcomes

CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def topk_correct(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: is its label among the k best scores (ties go to the lower class index)."""
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (ranked == labels[:, None]).any(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Top-k accuracy in percent (ties in scores go to the lower class index)."""
    return 100.0 * float(topk_correct(scores, labels, k).mean())


def headline_top1(ctx: Any, scores: np.ndarray, labels: np.ndarray, **params: Any) -> Any:
    """The headline top-1 record, carrying which test images it got right (`outcomes`)."""
    correct = topk_correct(scores, labels, 1)
    record = ctx.result("top1", 100.0 * float(correct.mean()), n=len(labels), headline=True, **params)
    record.outcomes = pack_outcomes(correct)
    return record


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, val) indices of train: stratified when every class has 2+ items, else random."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    fit, val = train_test_split(indices, test_size=fraction, stratify=stratify, random_state=seed)
    return np.sort(fit), np.sort(val)


def select_c(cs: Sequence[float], val_accuracies: Sequence[float], n_val: int) -> float:
    """The smallest C whose validation accuracy (a fraction) is within one validation
    sample, 1 / n_val, of the best: the strongest regularisation that is as good as the
    best up to one sample, stable under near-ties that differ between machines."""
    if len(cs) != len(val_accuracies) or not cs or n_val < 1:
        raise ValueError(f"need one accuracy per C and n_val >= 1: {len(cs)} Cs, {len(val_accuracies)} accuracies, n_val {n_val}")
    slack = 1e-9  # accuracies are k / n_val in floating point; keep exact ties inside the band
    threshold = max(val_accuracies) - 1.0 / n_val - slack
    return min(c for c, accuracy in zip(cs, val_accuracies) if accuracy >= threshold)


SMALL_PROBLEM = 10_000_000
"""Feature matrices up to this many entries are fitted on one thread: for small
problems BLAS/OpenMP threads cost more than they save, badly so on a busy machine."""


def fit_logistic(features: np.ndarray, labels: np.ndarray, c: float, max_iter: int) -> Any:
    """StandardScaler + LogisticRegression(C=c) fitted on (features, labels). The solver
    is pinned (lbfgs, deterministic) rather than left to scikit-learn's default."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, solver="lbfgs", tol=1e-4, max_iter=max_iter))
    with threadpool_limits(1 if features.size <= SMALL_PROBLEM else None):
        return model.fit(features, labels)


def class_probabilities(model: Any, features: np.ndarray, num_classes: int) -> np.ndarray:
    """predict_proba laid out over all classes (a class absent from train scores 0)."""
    proba = model.predict_proba(features)
    out = np.zeros((len(features), num_classes))
    out[:, model.classes_] = proba
    return out


# ----------------------------------------------------------------- DINO protocol
def random_resized_crop_params(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """(top, left, h, w) drawn as torchvision's RandomResizedCrop.get_params draws them."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augmented_batches(split: Any, batch_size: int, seed: int, epoch: int, scale: tuple[float, float] = (0.08, 1.0)) -> Any:
    """One epoch of (uint8 images [b, 3, S, S], labels [b]) in a shuffled order, each
    image RandomResizedCrop'd to S = split.image_size and flipped with probability 1/2."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    size = int(split.image_size)
    labels = np.asarray(split.labels)
    order = np.random.default_rng([seed, epoch]).permutation(len(split))

    def augment(image: torch.Tensor, index: int) -> torch.Tensor:
        rng = np.random.default_rng([seed, epoch, index])
        top, left, h, w = random_resized_crop_params(rng, image.shape[-2], image.shape[-1], scale)
        crop = TF.resized_crop(image, top, left, h, w, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
        return crop.flip(-1) if rng.random() < 0.5 else crop

    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        images = torch.stack(split.map_raw(chosen, augment))
        yield images, torch.from_numpy(labels[chosen].astype(np.int64))


def vit_last_blocks_features(encoder: Any, n_last_blocks: int = 4, avgpool: bool = False) -> Callable[[Any], Any] | None:
    """A function images -> [n, d] concatenating the normalised CLS token of the last
    `n_last_blocks` blocks that the encoder runs (DINO's get_intermediate_layers), or
    None when the encoder has no ViT blocks. The encoder's own `embed` does the
    resizing and normalisation; forward hooks on its blocks collect the tokens."""
    import torch

    model = getattr(encoder, "model", None)
    blocks = getattr(model, "blocks", None)
    norm = getattr(model, "norm", None)
    if model is None or blocks is None or norm is None or len(blocks) == 0:
        return None
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def features(images: torch.Tensor) -> torch.Tensor:
        captured: dict[int, list[torch.Tensor]] = {}

        def hook(index: int) -> Callable[..., None]:
            def save(module: Any, args: Any, output: torch.Tensor) -> None:
                parts = [norm(output[:, 0]).float()]
                if avgpool:
                    parts.append(norm(output[:, prefix:]).mean(dim=1).float())
                captured.setdefault(index, []).append(torch.cat(parts, dim=-1).cpu())

            return save

        handles = [block.register_forward_hook(hook(i)) for i, block in enumerate(blocks)]
        try:
            encoder.embed(images)
        finally:
            for handle in handles:
                handle.remove()
        ran = sorted(captured)[-n_last_blocks:]
        dim = model.embed_dim if hasattr(model, "embed_dim") else captured[ran[0]][0].shape[-1]
        cls = [torch.cat(captured[i])[:, :dim] for i in ran]
        if avgpool:
            cls.append(torch.cat(captured[ran[-1]])[:, dim:])
        return torch.cat(cls, dim=-1).clone()

    return features


class LinearTask(Task):
    """A linear probe on frozen features: logistic regression, or DINO's eval_linear recipe."""

    class Params(Task.Params):
        protocol: Literal["logistic", "dino"] = Field(
            "logistic", description="logistic: scikit-learn on embed features; dino: DINO's eval_linear"
        )
        seed: NonNegativeInt = Field(0, description="seed of the validation split (logistic) or of the init and augmentations (dino)")
        cs: list[PositiveFloat] = Field(list(CS), min_length=1, description="logistic: inverse regularisations C to choose from")
        val_fraction: float = Field(0.2, gt=0, lt=1, description="logistic: fraction of train held out to choose C")
        max_iter: PositiveInt = Field(1000, description="logistic: lbfgs iterations at most")
        epochs: NonNegativeInt = Field(100, description="dino: training epochs")
        lr: PositiveFloat = Field(0.001, description="dino: learning rate per 256 images (scaled by batch_size / 256)")
        batch_size: PositiveInt = Field(1024, description="dino: images per SGD step")
        n_last_blocks: PositiveInt = Field(4, description="dino: concatenate the CLS token of this many last blocks")
        avgpool_patchtokens: bool = Field(False, description="dino: also concatenate the last block's mean patch token")

    params: Params
    default_datasets = ("digits",)
    title = "Linear probe on frozen features (top-1 %)"

    def run(self, encoder: Any, ctx: Any) -> list:
        from harness.errors import HarnessError

        data = ctx.open_dataset()
        if np.asarray(data.train.labels).ndim != 1:
            raise HarnessError(f"dataset {ctx.dataset!r} is multi-label; the linear task needs one class per image")
        if self.params.protocol == "dino":
            return self._dino(data, encoder, ctx)
        return self._logistic(data, ctx)

    # ------------------------------------------------------------------ logistic
    def _logistic(self, data: Any, ctx: Any) -> list:
        cs, max_iter = self.params.cs, self.params.max_iter
        train = ctx.embed_split(data.train, "train")
        test = ctx.embed_split(data.test, "test")
        train_labels = np.asarray(data.train.labels, dtype=np.int64)
        test_labels = np.asarray(data.test.labels, dtype=np.int64)
        fit, val = holdout_split(train_labels, self.params.val_fraction, self.params.seed)
        records, accuracies = [], []
        for c in cs:
            model = fit_logistic(train[fit], train_labels[fit], c, max_iter)
            accuracies.append(float((model.predict(train[val]) == train_labels[val]).mean()))
            records.append(ctx.result("val_top1", 100.0 * accuracies[-1], n=len(val), protocol="logistic", C=c))
        best_c = select_c(cs, accuracies, len(val))
        model = fit_logistic(train, train_labels, best_c, max_iter)
        proba = class_probabilities(model, test, data.num_classes)
        records.append(headline_top1(ctx, proba, test_labels, protocol="logistic"))
        if data.num_classes >= 5:
            records.append(ctx.result("top5", topk_accuracy(proba, test_labels, 5), n=len(test_labels), protocol="logistic"))
        records.append(ctx.result("selected_C", best_c, n=len(val), protocol="logistic"))
        return records

    # ---------------------------------------------------------------------- DINO
    def _dino(self, data: Any, encoder: Any, ctx: Any) -> list:
        import torch

        epochs, base_lr, batch_size, seed = self.params.epochs, self.params.lr, self.params.batch_size, self.params.seed
        n_last, avgpool = self.params.n_last_blocks, self.params.avgpool_patchtokens
        device = torch.device(ctx.device)

        if getattr(encoder, "model", False) is None:  # a ViT not yet prepared (the runner prepares it)
            encoder.prepare(ctx.run)
        vit_features = vit_last_blocks_features(encoder, n_last, avgpool)
        kind = f"cls-last{n_last}" + ("+avgpool" if avgpool else "") if vit_features else "embed"
        featurise = vit_features or (lambda images: encoder.embed(images).float())
        num_classes = data.num_classes
        linear: torch.nn.Linear | None = None
        generator = torch.Generator().manual_seed(seed)

        def build(dim: int) -> torch.nn.Linear:
            layer = torch.nn.Linear(dim, num_classes)
            with torch.no_grad():
                layer.weight.normal_(0.0, 0.01, generator=generator)
                layer.bias.zero_()
            return layer.to(device)

        optimizer = scheduler = None
        loss_fn = torch.nn.CrossEntropyLoss()
        last_loss = float("nan")
        for epoch in range(epochs):
            total, count = 0.0, 0
            for images, labels in augmented_batches(data.train, batch_size, seed, epoch):
                feats = featurise(images).to(device)
                if linear is None:
                    linear = build(feats.shape[1])
                    optimizer = torch.optim.SGD(linear.parameters(), base_lr * batch_size / 256.0, momentum=0.9, weight_decay=0.0)
                    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=0)
                linear.train()
                loss = loss_fn(linear(feats), labels.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(labels)
                count += len(labels)
            scheduler.step()
            last_loss = total / max(count, 1)
        if linear is None:  # zero epochs: an untrained probe, still well defined
            with torch.no_grad():
                linear = build(featurise(next(data.train.batches(2))).shape[1])
        linear.eval()
        logits = []
        with torch.no_grad():
            for images in data.test.batches(batch_size):
                logits.append(linear(featurise(images).to(device)).float().cpu().numpy())
        scores = np.concatenate(logits)
        test_labels = np.asarray(data.test.labels, dtype=np.int64)
        params = {"protocol": "dino", "features": kind, "epochs": epochs}
        records = [headline_top1(ctx, scores, test_labels, **params)]
        if num_classes >= 5:
            records.append(ctx.result("top5", topk_accuracy(scores, test_labels, 5), n=len(test_labels), **params))
        records.append(ctx.result("train_loss", last_loss, n=len(data.train), **params))
        if not vit_features:
            for record in records:
                record.message = f"encoder {encoder.name!r} has no ViT blocks: probed on its embed features, not the last-{n_last} CLS concat"
        return records

    @classmethod
    def paper_numbers(cls) -> Any:
        from harness_plugins.tasks._paper import paper_numbers

        return paper_numbers("linear")


@hookimpl
def register_tasks(register: Any) -> None:
    register("linear", LinearTask)
