"""Dataset readers, by format.

A dataset is named in registry.yaml with a `format` and (for real data) a `root`;
`open_dataset(name, spec, formats)` returns what the format's reader makes of it:
`ClassificationData` (a memory split `train` and a query split `test`), `NightsData`
(triplet splits) or `SegmentationData` (image / label-map splits). Splits hand out
uint8 image batches [n, 3, H, W]; each encoder resizes and normalises them itself.

Real data is read from the root that registry.yaml (or the dataset's environment
variable) names, in the layout its authors publish; nothing is downloaded. A root that
is not there raises `DatasetUnavailable` (the runner records the cell as skipped,
naming the registry key to set); a malformed file raises `DataFormatError` naming the
file and the row or key at fault. Bundled formats (`digits`, `lfw-faces`, `textures`)
need no root.

Formats are registered through the `register_dataset_formats` hook, the core's own
(`harness.datasets.formats`) the same way as a plugin's. A reader is a function
`reader(name, spec)`; a plugin's reader builds its dataset from the pieces below.

The keys of cached embeddings and results see a fingerprint of the data under a
dataset's root (`harness.datasets.fingerprint`), whatever its format.
"""

from harness.datasets.formats import open_dataset
from harness.datasets.images import IMAGE_EXTENSIONS, PixelLimit, Preprocess, decode_image, pixel_limit
from harness.datasets.nights import NightsData
from harness.datasets.segmentation import SegmentationData
from harness.datasets.spec import Reader, dataset_options
from harness.datasets.splits import ArraySplit, ClassificationData, ImageFileSplit

__all__ = [
    "IMAGE_EXTENSIONS",
    "ArraySplit",
    "ClassificationData",
    "ImageFileSplit",
    "NightsData",
    "PixelLimit",
    "Preprocess",
    "Reader",
    "SegmentationData",
    "dataset_options",
    "decode_image",
    "open_dataset",
    "pixel_limit",
]
