"""polyglot-catalog: embed multilingual product catalogs into Qdrant and match products across regions.

The core (everything outside :mod:`polyglot_catalog.provider`) never imports Airflow, so it can be
used from the CLI, notebooks and tests without an Airflow installation in the loop.
"""

__version__ = "0.1.0"
