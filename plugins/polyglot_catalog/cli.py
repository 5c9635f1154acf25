"""``polyglot-catalog``: the same library as the Airflow operators, for backfills, debugging and evaluation.

Subcommands: ``embed``, ``match``, ``lookup``, ``stats``, ``build-model``. Bad arguments or input end with a
non-zero exit and one line on stderr, never a stack trace; the Qdrant API key comes from
``$QDRANT_API_KEY`` so it stays out of shell history. No Airflow import here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

PROG = "polyglot-catalog"
API_KEY_ENV = "QDRANT_API_KEY"
EXIT_INPUT = 1
EXIT_USAGE = 2


class UserError(Exception):
    """Bad input found by the CLI itself; printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), so scripts can log the reason."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _regions(value: str) -> list[str]:
    regions = [part.strip() for part in value.split(",") if part.strip()]
    if not regions:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of regions; got {value!r}")
    return regions


def _threshold(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threshold must be a number; got {value!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must be in [0, 1]; got {value}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {value}")
    return number


def _add_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", required=True, help="Qdrant collection name")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--qdrant-path", metavar="DIR", help="Qdrant local mode folder (embedded)")
    target.add_argument(
        "--qdrant-url", metavar="URL", help=f"Qdrant server URL (API key from ${API_KEY_ENV})"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; its spellings are a stable interface (README, scripts, CI)."""
    from polyglot_catalog.encoding import PRECISIONS  # numpy only; torch loads with the model

    parser = _Parser(
        prog=PROG, description="Embed multilingual catalogs into Qdrant and match across regions."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    embed = sub.add_parser("embed", help="embed Parquet files into a collection")
    embed.add_argument("--source", required=True, metavar="PATH_OR_GLOB", help="Parquet file, folder or glob")
    _add_store_args(embed)
    embed.add_argument("--model", metavar="NAME", help="model registry name, hub id or folder")
    embed.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="model weights: bf16 is ~2.5x faster on CPUs with AVX-512 bf16/AMX; fp16 is for CUDA "
        "(default: fp16 on CUDA, else fp32)",
    )
    embed.add_argument(
        "--threads", type=_positive_int, metavar="N", help="torch threads (default: one per CPU)"
    )

    match = sub.add_parser("match", help="match products across regions and write reports")
    _add_store_args(match)
    match.add_argument("--out", required=True, metavar="DIR", help="report folder to write")
    match.add_argument("--regions", type=_regions, metavar="A,B,...", help="regions to match (default: all)")
    match.add_argument("--threshold", type=_threshold, metavar="X", help="minimum match score in [0, 1]")
    match.add_argument("--labels", metavar="FILE", help="Parquet with region, sku, group_id for metrics")
    match.add_argument("--model", metavar="NAME", help="model whose stored vectors to use (default model)")
    match.add_argument(
        "--calibrate-on-labels",
        action="store_true",
        help="also fit the scorer and pick the threshold on --labels (metrics are then optimistic)",
    )
    match.add_argument(
        "--candidates",
        choices=("auto", "exact", "qdrant"),
        default="auto",
        help="candidate path: exact blocked top-k, Qdrant queries, or auto (exact up to 500k per region)",
    )
    match.add_argument(
        "--hnsw-ef", type=_positive_int, metavar="N", help="HNSW search beam of Qdrant queries"
    )

    match.add_argument(
        "--full-rematch",
        action="store_true",
        help="re-match the whole catalog (today every run is full; recorded in the summary)",
    )
    match.add_argument(
        "--run-id", metavar="ID", help="run id recorded in the match state (default: cli-<time>)"
    )

    lookup = sub.add_parser("lookup", help="print a product's group and twins from the match state")
    _add_store_args(lookup)
    lookup.add_argument("--region", required=True, help="the product's region")
    lookup.add_argument("--sku", required=True, help="the product's SKU")

    stats = sub.add_parser("stats", help="print point counts of a collection as JSON")
    _add_store_args(stats)

    sub.add_parser("build-model", help="build the bundled default model into the cache")
    return parser


def _client(args: argparse.Namespace, *, must_exist: bool) -> Any:
    from polyglot_catalog.store import open_client

    if args.qdrant_path:
        path = Path(args.qdrant_path).expanduser()
        if must_exist and args.qdrant_path != ":memory:" and not path.is_dir():
            raise UserError(f"no Qdrant data at --qdrant-path {args.qdrant_path!r}")
        return open_client(path=args.qdrant_path)
    return open_client(url=args.qdrant_url, api_key=os.environ.get(API_KEY_ENV) or None)


def _store(client: Any, collection: str, model: str | None, *, must_exist: bool) -> Any:
    from polyglot_catalog.models.registry import DEFAULT_MODEL
    from polyglot_catalog.store import CatalogStore, vector_name_for

    store = CatalogStore(client, collection, vector_name_for(model or DEFAULT_MODEL))
    if must_exist and not store.exists():
        raise UserError(f"collection {collection!r} does not exist")
    return store


def _cmd_embed(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.embed import embed_catalog
    from polyglot_catalog.encoding import Encoder
    from polyglot_catalog.reading import list_sources

    list_sources(args.source)  # fail on a bad source before the model loads
    model = {"model": args.model} if args.model else {}
    encoder = Encoder(**model, precision=args.precision, threads=args.threads)  # ValueError: one line
    client = _client(args, must_exist=False)
    try:
        store = _store(client, args.collection, encoder.model_name, must_exist=False)
        with _progress_bar() as progress:
            return embed_catalog(args.source, store, encoder, progress=progress)
    finally:
        client.close()


@contextmanager
def _progress_bar() -> Iterator[Any]:
    """A live bar on a terminal; on a pipe or a log file tqdm stays silent and the stage's own
    periodic log lines (rows done, rows/s, ETA) are the progress report."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="rows", disable=None, file=sys.stderr, dynamic_ncols=True, desc="embed")

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _run_id(given: str | None) -> str:
    import uuid
    from datetime import UTC, datetime

    return given or f"cli-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _cmd_match(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.matching.pipeline import match_catalog
    from polyglot_catalog.matching.state import commit_match_state
    from polyglot_catalog.models.registry import DEFAULT_MODEL
    from polyglot_catalog.reports import write_reports

    if args.labels and not Path(args.labels).is_file():
        raise UserError(f"labels file {args.labels!r} does not exist")
    client = _client(args, must_exist=True)
    try:
        store = _store(client, args.collection, args.model, must_exist=True)
        result = match_catalog(
            store,
            regions=args.regions,
            threshold=args.threshold,
            labels=args.labels,
            fit_on_labels=args.calibrate_on_labels,
            model=args.model or DEFAULT_MODEL,
            collection=args.collection,
            candidates=args.candidates,
            **({} if args.hnsw_ef is None else {"hnsw_ef": args.hnsw_ef}),
        )
        # the report is written under the state lock, before the state: a failed write changes nothing
        run_id = _run_id(args.run_id)
        written: list[Path] = []
        commit_match_state(
            store,
            result,
            run_id,
            full_rematch=args.full_rematch,
            before_apply=lambda r: written.append(write_reports(Path(args.out), r, run_id=run_id)),
        )
    finally:
        client.close()
    report_dir = written[0]
    metrics = (result.summary.get("metrics") or {}).get("overall")
    return {
        "report_dir": str(report_dir),
        "run_id": run_id,
        "changes": result.summary.get("changes"),
        "pairs": len(result.pairs),
        "matches": len(result.matches),
        "unmatched": len(result.unmatched),
        "metrics": metrics,
    }


def _cmd_lookup(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.matching.state import lookup_product

    client = _client(args, must_exist=True)
    try:
        if not client.collection_exists(args.collection):
            raise UserError(f"collection {args.collection!r} does not exist")
        return lookup_product(client, args.collection, args.region, args.sku)
    finally:
        client.close()


def _cmd_stats(args: argparse.Namespace) -> dict[str, Any]:
    client = _client(args, must_exist=True)
    try:
        return _store(client, args.collection, None, must_exist=True).stats()
    finally:
        client.close()


def _cmd_build_model(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.models.registry import ensure_bundled_model

    return {"model_dir": str(ensure_bundled_model())}


COMMANDS = {
    "embed": _cmd_embed,
    "match": _cmd_match,
    "lookup": _cmd_lookup,
    "stats": _cmd_stats,
    "build-model": _cmd_build_model,
}


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or environment (print one line), as opposed to bugs (traceback)."""
    errors: list[type[BaseException]] = [UserError, ValueError, OSError, RuntimeError]
    try:
        from qdrant_client.http.exceptions import ApiException

        errors.append(ApiException)
    except ImportError:  # pragma: no cover - qdrant-client is a hard dependency
        pass
    return tuple(errors)


@contextmanager
def _progress_logging(verbose: bool) -> Iterator[None]:
    """Package log lines on stderr while one command runs; root logger untouched, handler removed after."""
    package_log = logging.getLogger("polyglot_catalog")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = (package_log.level, package_log.propagate)
    package_log.addHandler(handler)
    package_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    package_log.propagate = False
    try:
        yield
    finally:
        package_log.removeHandler(handler)
        package_log.level, package_log.propagate = saved


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; print its JSON result on stdout. Returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    try:
        with _progress_logging(args.verbose):
            result = COMMANDS[args.command](args)
    except _input_errors() as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
