"""Build the demo catalog (one Parquet file per region plus ground-truth labels) from the IKEA corpus.

Why: the matcher must never see the shared product id, so each region gets its own SKUs (seeded
shuffle, then region prefix + running number) and the truth goes to a separate ``labels.parquet``.
The default builds the small sample shipped in ``include/demo_catalog``; ``--full --out DIR`` builds all
3,500 dev products when ``../shared/data`` is present. Output is deterministic for a given input.

    python scripts/build_demo_catalog.py                 # small sample -> include/demo_catalog
    python scripts/build_demo_catalog.py --full --out .data/full_catalog
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / ".." / "shared" / "data" / "ikea" / "ikea_products_dev.csv"
DEFAULT_OUT = ROOT / "include" / "demo_catalog"
SEED = 20_171_101
REGIONS = {"US": ("en", "en"), "DE": ("de", "de"), "FR": ("fr", "fr")}  # region -> (CSV column, language)
# Sample: products listed in all three regions, plus some listed only in the US and one of DE/FR,
# so the matcher also meets products that have no twin in a region.
SAMPLE = {"all": 250, "en_de": 50, "en_fr": 50}

ATTRIBUTION = """# Demo catalog: source and attribution

Built by `scripts/build_demo_catalog.py` from `ikea/ikea_products_dev.csv` of the project's evaluation
data: GitHub `sampalomad/IKEA-Dataset` (commit 60810a66), the multimodal machine-translation corpus of
Zhou et al., "A Visual Attention Grounding Neural Model for Multimodal Machine Translation", EMNLP 2018.

- Licence of the dataset: MIT, Copyright (c) 2018 University of California, Davis (see below).
- The product texts were crawled in 2017 from retailers' US, German and French web sites (IKEA,
  Under Armour, some Uniqlo) and may remain under the retailers' copyright. The project ships only a
  small sample, for demonstration and testing, with this attribution; this folder holds {products}
  products.
- `US.parquet` holds each product's US (English) description, `DE.parquet` its German and
  `FR.parquet` its French site description (each site's own copy, not translations). SKUs are
  assigned per region after a seeded shuffle, so they do not reveal which products are the same;
  `labels.parquet` maps (region, sku) to `group_id`, the corpus's original `product_id`.
- Text is kept as in the corpus (lightly tokenised: spaces around punctuation).

## MIT License (dataset)

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions: The above copyright notice and this
permission notice shall be included in all copies or substantial portions of the Software.
THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
"""


def load_corpus(path: Path) -> pa.Table:
    """The CSV with empty/whitespace texts as nulls (empty means "not listed in that region")."""
    table = pacsv.read_csv(path)
    for column in ("en", "de", "fr"):
        text = table[column]
        listed = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(text, ""))), 0)
        table = table.set_column(table.schema.get_field_index(column), column, pc.if_else(listed, text, None))
    return table.sort_by("product_id")


def choose_products(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """A seeded sample with the configured mix of three-region and two-region products."""
    has_de, has_fr = pc.is_valid(table["de"]), pc.is_valid(table["fr"])
    kinds = {
        "all": pc.and_(has_de, has_fr),
        "en_de": pc.and_(has_de, pc.invert(has_fr)),
        "en_fr": pc.and_(pc.invert(has_de), has_fr),
    }
    picked = []
    for kind, mask in kinds.items():
        rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        picked.append(np.sort(rng.choice(rows, size=min(SAMPLE[kind], len(rows)), replace=False)))
    return table.take(np.sort(np.concatenate(picked)))


def region_tables(products: pa.Table, rng: np.random.Generator) -> tuple[dict[str, pa.Table], pa.Table]:
    """Per-region catalogs with their own shuffled SKUs, and the (region, sku) -> group_id labels."""
    catalogs, labels = {}, []
    for region, (column, language) in REGIONS.items():
        listed = products.filter(pc.is_valid(products[column]))
        order = rng.permutation(listed.num_rows)
        listed = listed.take(order)
        skus = pa.array([f"{region}-{i:05d}" for i in range(1, listed.num_rows + 1)])
        n = listed.num_rows
        catalogs[region] = pa.table(
            {
                "sku": skus,
                "region": pa.array([region] * n),
                "language": pa.array([language] * n),
                "description": listed[column],
            }
        )
        labels.append(
            pa.table({"region": pa.array([region] * n), "sku": skus, "group_id": listed["product_id"]})
        )
    return catalogs, pa.concat_tables(labels).sort_by([("region", "ascending"), ("sku", "ascending")])


def build(csv_path: Path, out_dir: Path, *, full: bool) -> dict[str, int]:
    """Write ``{US,DE,FR}.parquet``, ``labels.parquet`` (and ATTRIBUTION.md); returns rows per region."""
    rng = np.random.default_rng(SEED)
    corpus = load_corpus(csv_path)
    products = corpus if full else choose_products(corpus, rng)
    catalogs, labels = region_tables(products, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    for region, table in catalogs.items():
        pq.write_table(table, out_dir / f"{region}.parquet", compression="zstd")
    pq.write_table(labels, out_dir / "labels.parquet", compression="zstd")
    (out_dir / "ATTRIBUTION.md").write_text(ATTRIBUTION.format(products=products.num_rows))
    return {region: table.num_rows for region, table in catalogs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="ikea_products_dev.csv")
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--full", action="store_true", help="all products instead of the small sample")
    args = parser.parse_args(argv)
    if args.full and args.out is None:
        parser.error("--full needs --out DIR (the shipped sample in include/ stays small)")
    if not args.csv.exists():
        print(f"data not found: {args.csv} (needs ../shared/data next to the repo)", file=sys.stderr)
        return 2
    out = args.out or DEFAULT_OUT
    counts = build(args.csv, out, full=args.full)
    print(f"wrote {out}: " + ", ".join(f"{r}={n}" for r, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
