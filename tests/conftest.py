"""Test-wide environment: offline model loading and a throwaway Airflow home.

The variables are set at import time, before anything imports airflow, because Airflow reads its
configuration once on first import.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="polyglot-airflow-"))
atexit.register(shutil.rmtree, _AIRFLOW_HOME, ignore_errors=True)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("POLYGLOT_CACHE_DIR", str(ROOT / ".cache"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__PARALLELISM"] = "2"
os.environ["AIRFLOW__API__HOST"] = "127.0.0.1"
os.environ["POLYGLOT_DATA_DIR"] = str(_AIRFLOW_HOME / "data")

SAMPLE_DIR = ROOT / "include" / "demo_catalog"


def write_demo_slice(folder: Path, in_all: int, in_two: int) -> set[tuple[str, str]]:
    """The demo files cut to their first products (label groups, by id) listed in all three regions
    and in two, with their labels, into ``folder``; returns the (region, sku) keys kept.

    Why: end-to-end tests run the real model on real descriptions, at a few per second on a 2-core CPU
    without AVX-512; a slice keeps every region pair and both group shapes at a fraction of the cost.
    """
    import pandas as pd

    labels = pd.read_parquet(SAMPLE_DIR / "labels.parquet")
    sizes = labels.groupby("group_id")["region"].nunique().sort_index()
    keep = {*sizes[sizes == 3].index[:in_all], *sizes[sizes == 2].index[:in_two]}
    kept = labels[labels["group_id"].isin(keep)]
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(SAMPLE_DIR.glob("*.parquet")):
        if path.name != "labels.parquet":
            table = pd.read_parquet(path)
            table[table["sku"].isin(set(kept["sku"]))].to_parquet(folder / path.name, index=False)
    kept.to_parquet(folder / "labels.parquet", index=False)
    return set(zip(kept["region"], kept["sku"], strict=True))


@pytest.fixture(scope="session")
def encoder():
    """The real bundled model, loaded once for the whole session (built by `make test`'s setup)."""
    from polyglot_catalog.encoding import Encoder

    return Encoder(precision="fp32")  # the reference precision; auto picks bf16 on AMX CPUs


@pytest.fixture(params=["edge", "local", pytest.param("server", marks=pytest.mark.qdrant_server)])
def qdrant_client(request):
    """The same test body against both embedded engines (qdrant-edge, the default, and qdrant-client's
    local mode) and, when ``QDRANT_URL`` is set, a real server.

    Server runs delete only the collections the test created, so a shared dev server is left as found.
    """
    from polyglot_catalog.store import open_client

    if request.param in ("edge", "local"):
        client = open_client(path=":memory:", embedded=request.param)
        yield client
        client.close()
        return
    url = os.environ.get("QDRANT_URL")
    if not url:
        pytest.skip("QDRANT_URL is not set: server-path variant skipped")
    client = open_client(url=url, api_key=os.environ.get("QDRANT_API_KEY"))
    before = {c.name for c in client.get_collections().collections}
    yield client
    for collection in client.get_collections().collections:
        if collection.name not in before:
            client.delete_collection(collection.name)
    client.close()
