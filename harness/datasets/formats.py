"""The core's dataset formats, and opening a dataset by its registry entry.

The core registers its own readers through the `register_dataset_formats` hook that a
plugin implements: the plugin loader (harness.config.loading) hands this module to the
same hook call as every plugin module, first, so a plugin format that takes one of
these names is refused as a duplicate naming both sources.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from harness.datasets.bundled import read_digits, read_lfw_faces, read_textures
from harness.datasets.folders import read_cub200, read_flowers102, read_food101, read_imagefolder, read_imagenet
from harness.datasets.huggingface import read_huggingface
from harness.datasets.medmnist import medmnist_files, read_medmnist
from harness.datasets.nights import read_nights
from harness.datasets.segmentation import read_ade20k, read_coco, read_voc
from harness.datasets.spec import Reader
from harness.datasets.synthetic_scenes import read_synthetic_scenes
from harness.datasets.tables import read_table
from harness.datasets.torchvision_format import read_torchvision
from harness.datasets.webdataset import read_webdataset, webdataset_files
from harness.errors import UnknownNameError
from harness.hookspecs import RegisterFormat, hookimpl

if TYPE_CHECKING:
    from harness.config.schema import DatasetSpec


@hookimpl
def register_dataset_formats(register: RegisterFormat) -> None:
    register("digits", read_digits)
    register("lfw-faces", read_lfw_faces)
    register("textures", read_textures)
    register("imagefolder", read_imagefolder)
    register("imagenet", read_imagenet)
    register("table", read_table)
    register("flowers102", read_flowers102)
    register("cub200", read_cub200)
    register("food101", read_food101)
    register("medmnist", read_medmnist, files=medmnist_files)
    register("nights", read_nights)
    register("coco", read_coco)
    register("voc", read_voc)
    register("ade20k", read_ade20k)
    register("synthetic-scenes", read_synthetic_scenes)
    register("webdataset", read_webdataset, files=webdataset_files)
    register("huggingface", read_huggingface)
    register("torchvision", read_torchvision)


def builtin_readers() -> dict[str, Reader]:
    """The core's own formats, for opening a dataset without loading plugins."""
    readers: dict[str, Reader] = {}

    def register(name: str, reader: Reader, files: Any = None) -> None:
        readers[name] = reader

    register_dataset_formats(register)
    return readers


def open_dataset(name: str, spec: DatasetSpec, formats: Mapping[str, Reader] | None = None) -> Any:
    """Read dataset `name` as its registry entry `spec` says.

    `formats` maps format names to readers: the loaded plugins' table
    (`PluginRegistry.readers()`), which holds plugin formats too. Without it only the
    core's own formats are known."""
    table = builtin_readers() if formats is None else formats
    try:
        reader = table[spec.format]
    except KeyError:
        raise UnknownNameError(f"format of dataset {name!r}", spec.format, sorted(table)) from None
    return reader(name, spec)
