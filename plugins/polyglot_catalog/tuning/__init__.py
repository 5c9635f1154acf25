"""Fine-tuning the encoder on product pairs the catalog already links (``polyglot-catalog tune``).

No Airflow import here: the DAG and the CLI call :func:`tune_catalog`.
"""

from polyglot_catalog.tuning.pairs import CatalogTexts, link_pairs, read_catalog, split_by_group
from polyglot_catalog.tuning.train import TuneConfig
from polyglot_catalog.tuning.tune import DEFAULT_NAME, tune_catalog, tune_pairs

__all__ = [
    "DEFAULT_NAME",
    "CatalogTexts",
    "TuneConfig",
    "link_pairs",
    "read_catalog",
    "split_by_group",
    "tune_catalog",
    "tune_pairs",
]
