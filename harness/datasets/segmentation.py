"""Segmentation datasets: COCO, Pascal VOC 2012, ADE20k and `synthetic-scenes`.

Every reader returns a `SegmentationData`: named splits of (image, label map) items at
their native resolution, the class names by label value (0 = background), the square
input side its protocol uses (`image_size`, 448 for the real datasets) and how its
images and label maps are resized (as the released code did for that dataset):

  format            layout under the root                                  resize (image / labels)
  coco              annotations/instances_val2017.json, val2017/*.jpg      bilinear / nearest (OpenCV)
  voc               [VOCdevkit/]VOC2012/JPEGImages, SegmentationClass,     bilinear, antialiased /
                    ImageSets/Segmentation/{train,val}.txt                 nearest at centres (PIL)
  ade20k            images/{training,validation}/*.jpg +                   bilinear, antialiased /
                    annotations/{training,validation}/*.png, or a flat     nearest at centres
                    images/ + annotations/ (or masks/) pair of folders
  synthetic-scenes  no root: generated, see synthetic_scenes.py            native size / nearest at centres

Label maps are integer class indices per pixel: COCO's category id (later annotations
overwrite earlier ones, crowd regions included), VOC's palette index (255 = object
boundary, `ignore_index`), ADE20k's class index (0 = "other"); an `ade20k`-layout mask
is a palette, greyscale, 16-bit or 1-bit PNG (1-bit: classes 0 and 1). A root that is absent
raises DatasetUnavailable (the cell is skipped, naming the registry key to set).
"""

from __future__ import annotations

import contextlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from harness.datasets.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, PixelLimit, decode_image, pixel_limit
from harness.datasets.spec import dataset_options, default_workers
from harness.errors import DataFormatError, HarnessError

if TYPE_CHECKING:
    import torch

    from harness.config.schema import DatasetSpec

IMAGE_MODES = ("bilinear", "bilinear-aa", "bicubic-aa")
LABEL_MODES = ("nearest", "nearest-exact")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


# --------------------------------------------------------------------------- resizing
def resize_image(image: np.ndarray, size: int | None, mode: str = "bilinear-aa") -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [3, size, size] (size None: native size, no resampling).

    "bilinear": half-pixel bilinear without antialiasing (OpenCV's INTER_LINEAR);
    "bilinear-aa" / "bicubic-aa": antialiased when shrinking (torchvision's Resize)."""
    import torch
    import torch.nn.functional as F

    chw = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    if size is None or chw.shape[1:] == (size, size):
        return chw
    if mode not in IMAGE_MODES:
        raise HarnessError(f"unknown image resize mode {mode!r}; known: {', '.join(IMAGE_MODES)}")
    x = torch.from_numpy(chw)[None].float()
    interp = "bicubic" if mode.startswith("bicubic") else "bilinear"
    out = F.interpolate(x, size=(size, size), mode=interp, align_corners=False, antialias=mode.endswith("-aa"))
    return out[0].round().clamp(0, 255).to(torch.uint8).numpy()


def resize_labels(labels: np.ndarray, size: int | tuple[int, int] | None, mode: str = "nearest-exact") -> np.ndarray:
    """int [H, W] -> int64 [h, w] by nearest neighbour, in exact integer arithmetic.

    "nearest": output i takes source floor(i * H / h) (OpenCV's INTER_NEAREST);
    "nearest-exact": source floor((i + 0.5) * H / h), the pixel under the output
    pixel's centre (PIL's NEAREST, torch's "nearest-exact"; a centre exactly on a
    source border, e.g. 64 -> 112 px, takes the later pixel, where PIL's float
    arithmetic sometimes rounds down)."""
    labels = np.asarray(labels)
    if size is None:
        return labels.astype(np.int64)
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    height, width = labels.shape
    if (h, w) == (height, width):
        return labels.astype(np.int64)
    if mode == "nearest":
        rows, cols = np.arange(h) * height // h, np.arange(w) * width // w
    elif mode == "nearest-exact":
        rows, cols = (2 * np.arange(h) + 1) * height // (2 * h), (2 * np.arange(w) + 1) * width // (2 * w)
    else:
        raise HarnessError(f"unknown label resize mode {mode!r}; known: {', '.join(LABEL_MODES)}")
    return labels[rows][:, cols].astype(np.int64)


# ----------------------------------------------------------------------------- splits
class SegmentationSplit:
    """Items (image uint8 [H, W, 3], labels int64 [H, W]) at native resolution.

    Subclasses implement `read(i)` (and may implement a cheaper `read_labels(i)`).
    `batch(indices, image_size, label_size)` decodes in a thread pool and resizes
    with the split's `image_mode` / `label_mode`. `limit` is the largest image decoded.
    """

    image_mode = "bilinear-aa"
    label_mode = "nearest-exact"

    def __init__(self, name: str, workers: int | None = None, limit: PixelLimit = PixelLimit()) -> None:
        self.name = name
        self.workers = workers or default_workers()
        self.limit = limit

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def read_labels(self, index: int) -> np.ndarray:
        return self.read(index)[1]

    def origin(self, index: int) -> str:
        return f"{self.name} item {index}"

    def _check(self, index: int, image: np.ndarray, labels: np.ndarray) -> None:
        if image.shape[:2] != labels.shape:
            raise DataFormatError(
                f"{self.origin(index)}: image is {image.shape[1]} x {image.shape[0]} px but its label map is "
                f"{labels.shape[1]} x {labels.shape[0]}"
            )

    def load(self, index: int, image_size: int | None, label_size: int | tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.read(int(index))
        self._check(int(index), image, labels)
        return resize_image(image, image_size, self.image_mode), resize_labels(labels, label_size, self.label_mode)

    def batch(
        self, indices: Sequence[int], image_size: int | None, label_size: int | tuple[int, int] | None = None
    ) -> tuple[torch.Tensor, Any]:
        """uint8 images [n, 3, S, S] (torch) and int64 label maps: [n, h, w] (numpy) at
        `label_size`, or a list of native-size maps when `label_size` is None."""
        import torch

        indices = [int(i) for i in indices]
        if self.workers > 1 and len(indices) > 1:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="seg-decode") as pool:
                items = list(pool.map(lambda i: self.load(i, image_size, label_size), indices))
        else:
            items = [self.load(i, image_size, label_size) for i in indices]
        images = torch.from_numpy(np.stack([image for image, _ in items]))
        labels = [labels for _, labels in items]
        return images, (labels if label_size is None else np.stack(labels))


class FileSplit(SegmentationSplit):
    """One image file and one label PNG per item (VOC, ADE20k and plain folders)."""

    def __init__(self, name: str, images: Sequence[Path], masks: Sequence[Path], image_mode: str, label_mode: str,
                 workers: int | None = None, limit: PixelLimit = PixelLimit()) -> None:
        super().__init__(name, workers, limit)
        self.images, self.masks = list(images), list(masks)
        self.image_mode, self.label_mode = image_mode, label_mode

    def __len__(self) -> int:
        return len(self.images)

    def origin(self, index: int) -> str:
        return str(self.images[index])

    def read_labels(self, index: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.masks[index]
        try:
            with Image.open(path) as mask:
                if mask.mode not in ("P", "L", "1", "I", "I;16"):
                    raise DataFormatError(
                        f"{path}: a label map must be a palette, 1-bit or single-channel PNG of class indices, got mode {mask.mode}"
                    )
                return np.asarray(mask).astype(np.int64)  # mode "1" reads as False/True: classes 0 and 1
        except FileNotFoundError:
            raise DataFormatError(f"{path}: label map not found (for {self.images[index]})") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataFormatError(f"{path}: cannot decode label map: {exc}") from None

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(decode_image(self.images[index], limit=self.limit), dtype=np.uint8)
        return image, self.read_labels(index)


class CocoSplit(SegmentationSplit):
    """COCO images with semantic label maps built from the instance annotations."""

    image_mode = "bilinear"
    label_mode = "nearest"

    def __init__(self, name: str, coco: Any, image_dir: Path, ids: list[int], workers: int | None = None,
                 limit: PixelLimit = PixelLimit()) -> None:
        super().__init__(name, workers, limit)
        self.coco, self.image_dir, self.ids = coco, image_dir, ids

    def __len__(self) -> int:
        return len(self.ids)

    def origin(self, index: int) -> str:
        return f"COCO image id {self.ids[index]}"

    def read_labels(self, index: int) -> np.ndarray:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        labels = np.zeros((int(info["height"]), int(info["width"])), dtype=np.int64)
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id)):
            try:
                mask = self.coco.annToMask(ann)
            except Exception as exc:
                raise DataFormatError(f"COCO annotation id {ann.get('id')} (image id {image_id}): bad segmentation: {exc}") from None
            labels[mask == 1] = int(ann["category_id"])  # later annotations overwrite earlier
        return labels

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        info = self.coco.imgs[self.ids[index]]
        path = self.image_dir / info["file_name"]
        image = np.asarray(decode_image(path, self.origin(index), self.limit), dtype=np.uint8)
        return image, self.read_labels(index)


# ---------------------------------------------------------------------------- dataset
@dataclass
class SegmentationData:
    name: str
    splits: dict[str, SegmentationSplit]
    classes: list[str]
    image_size: int | None = 448
    ignore_index: int | None = None
    description: str = ""
    synthetic: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SegmentationSplit:
        if name not in self.splits:
            raise HarnessError(f"dataset {self.name!r} has no split {name!r}; it has: {', '.join(self.splits)}")
        return self.splits[name]


# --------------------------------------------------------------------------------- COCO
def read_coco(name: str, spec: DatasetSpec) -> SegmentationData:
    """COCO (2017) instance annotations as semantic label maps: label = category id.

    Options: annotations ("annotations/instances_val2017.json"), images ("val2017"),
    image_size (448), limit (None: every image, in the annotation file's order),
    max_pixels (the largest image decoded, PIL's threshold of 89478485). Needs pycocotools.
    """
    options = dataset_options(name, spec, {"annotations": "annotations/instances_val2017.json", "images": "val2017",
                                    "image_size": 448, "limit": None, "workers": None, "max_pixels": DEFAULT_MAX_PIXELS})
    root = spec.resolved_root(name)
    annotations = root / options["annotations"]
    image_dir = root / options["images"]
    if not annotations.is_file():
        raise DataFormatError(f"{annotations}: annotation file not found (the COCO root holds {options['annotations']} and {options['images']}/)")
    if not image_dir.is_dir():
        raise DataFormatError(f"{image_dir}: image folder not found (the COCO root holds {options['annotations']} and {options['images']}/)")
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise HarnessError("reading COCO annotations needs pycocotools: pip install pycocotools") from None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(annotations))
    except Exception as exc:
        raise DataFormatError(f"{annotations}: not a readable COCO annotation file ({type(exc).__name__}: {exc})") from None
    ids = list(coco.getImgIds())
    if options["limit"] is not None:
        ids = ids[: int(options["limit"])]
    top = max([int(c) for c in coco.cats] or [0])
    classes = ["background"] + [""] * top
    for cat_id, cat in coco.cats.items():
        classes[int(cat_id)] = str(cat.get("name", cat_id))
    split = CocoSplit(f"{name}/{options['images']}", coco, image_dir, ids, options["workers"], pixel_limit(name, options))
    return SegmentationData(
        name=name, splits={"val": split}, classes=classes, image_size=options["image_size"],
        description=f"COCO {annotations.name}: {len(ids)} images, semantic labels = category ids",
    )


# ---------------------------------------------------------------------------------- VOC
def _find_voc(root: Path) -> Path:
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DataFormatError(
        f"{root}: no Pascal VOC layout found (expected JPEGImages/, SegmentationClass/ and "
        "ImageSets/Segmentation/{train,val}.txt here, under VOC2012/ or under VOCdevkit/VOC2012/)"
    )


def read_voc(name: str, spec: DatasetSpec) -> SegmentationData:
    """Pascal VOC 2012 segmentation: splits from ImageSets/Segmentation/{train,val}.txt,
    labels = the palette indices of SegmentationClass/*.png (255 = boundary).
    Options: image_size (448), splits ([train, val]), max_pixels (as for COCO)."""
    options = dataset_options(
        name, spec, {"image_size": 448, "splits": ["train", "val"], "workers": None, "max_pixels": DEFAULT_MAX_PIXELS}
    )
    base = _find_voc(spec.resolved_root(name))
    splits = {}
    for split in options["splits"]:
        listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DataFormatError(f"{listing}: split list not found")
        ids = [line.strip().split()[0] for line in listing.read_text().splitlines() if line.strip()]
        splits[split] = FileSplit(
            f"{name}/{split}", [base / "JPEGImages" / f"{i}.jpg" for i in ids],
            [base / "SegmentationClass" / f"{i}.png" for i in ids], "bilinear-aa", "nearest-exact", options["workers"],
            pixel_limit(name, options),
        )
    return SegmentationData(
        name=name, splits=splits, classes=list(VOC_CLASSES), image_size=options["image_size"], ignore_index=255,
        description=f"Pascal VOC 2012 segmentation ({', '.join(f'{k} {len(v)}' for k, v in splits.items())})",
    )


# ------------------------------------------------------------------------------- ADE20k
def _paired_files(images: Path, masks: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    image_paths, mask_paths = [], []
    for path in files:
        mask = masks / f"{path.stem}.png"
        if not mask.is_file():
            raise DataFormatError(f"{path}: no label map {mask.name} in {masks}")
        image_paths.append(path)
        mask_paths.append(mask)
    return image_paths, mask_paths


def read_ade20k(name: str, spec: DatasetSpec) -> SegmentationData:
    """ADE20k SceneParsing (ADEChallengeData2016): images/{training,validation}/*.jpg and
    annotations/{training,validation}/*.png (class indices, 0 = other). A root holding
    flat images/ and annotations/ (or masks/) folders is read as one split "val".
    Options: image_size (448), num_classes (151), max_pixels (as for COCO)."""
    options = dataset_options(name, spec, {"image_size": 448, "num_classes": 151, "workers": None, "max_pixels": DEFAULT_MAX_PIXELS})
    limit = pixel_limit(name, options)
    root = spec.resolved_root(name)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    splits: dict[str, SegmentationSplit] = {}
    for split, folder in (("train", "training"), ("val", "validation")):
        images, masks = root / "images" / folder, root / "annotations" / folder
        if images.is_dir() and masks.is_dir():
            paths = _paired_files(images, masks)
            splits[split] = FileSplit(f"{name}/{split}", *paths, "bilinear-aa", "nearest-exact", options["workers"], limit)
    if not splits:
        masks = root / "annotations" if (root / "annotations").is_dir() else root / "masks"
        if not ((root / "images").is_dir() and masks.is_dir()):
            raise DataFormatError(
                f"{root}: no ADE20k layout found (expected images/{{training,validation}}/ and "
                "annotations/{training,validation}/, or flat images/ and annotations/ folders)"
            )
        paths = _paired_files(root / "images", masks)
        splits["val"] = FileSplit(f"{name}/val", *paths, "bilinear-aa", "nearest-exact", options["workers"], limit)
    classes = ["other"] + [f"class {i}" for i in range(1, int(options["num_classes"]))]
    return SegmentationData(
        name=name, splits=splits, classes=classes, image_size=options["image_size"],
        description=f"ADE20k ({', '.join(f'{k} {len(v)}' for k, v in splits.items())})",
    )
