"""The paper's reported numbers for the segmentation and gestalt tasks.

Gestalt (Table 4) rows live in segmentation_paper_numbers.csv beside this module; the
COCO R^2 rows (Table 2) in the shared paper_numbers.csv. Row labels follow the encoder
registry's `paper_row` names ("Random init.", "StyleGAN"; the paper's Table 4 prints
"Random" and "Stylegan"). Values are percentages, as the paper prints them.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

import pandas


@lru_cache(maxsize=None)
def _table() -> pandas.DataFrame:
    with files("harness_plugins.tasks").joinpath("segmentation_paper_numbers.csv").open() as handle:
        return pandas.read_csv(handle)


def paper_numbers(task_plugin: str) -> pandas.DataFrame:
    """Rows (dataset, paper_row, metric, value) for one task family."""
    table = _table()
    return table[table.task_plugin == task_plugin].drop(columns="task_plugin").reset_index(drop=True)
