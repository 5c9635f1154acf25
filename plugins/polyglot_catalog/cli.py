"""``polyglot-catalog``: the same library as the Airflow operators, for backfills, debugging and evaluation.

Subcommands: ``embed``, ``match``, ``lookup``, ``stats``, ``build-model``, ``tune``. Every failure
ends with a non-zero exit and one line on stderr, never a stack trace (``-v`` adds one for bugs);
store failures name the endpoint, the operation and the attempts. The Qdrant API key comes from
``$QDRANT_API_KEY`` so it stays out of shell history, and it is scrubbed from everything printed or
logged. Names and paths are checked before any heavy work (model load). No Airflow import here.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

PROG = "polyglot-catalog"
API_KEY_ENV = "QDRANT_API_KEY"
EXIT_INPUT = 1  # bad input, environment or store failure: the message says which
EXIT_USAGE = 2
EXIT_INTERNAL = 3  # a bug: one line, a traceback only with -v
EXIT_INTERRUPTED = 130


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


def _collection(value: str) -> str:
    from polyglot_catalog.names import check_collection_name

    try:
        return check_collection_name(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _seconds(value: str) -> float:
    from polyglot_catalog.store import check_timeout

    try:
        return check_timeout(value, "timeout")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_store_args(parser: argparse.ArgumentParser) -> None:
    from polyglot_catalog.store import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT

    parser.add_argument(
        "--collection", required=True, type=_collection, help="Qdrant collection (letters, digits, _ and -)"
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--qdrant-path", metavar="DIR", help="embedded Qdrant folder (qdrant-edge)")
    target.add_argument(
        "--qdrant-url", metavar="URL", help=f"Qdrant server URL (API key from ${API_KEY_ENV})"
    )
    parser.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=DEFAULT_CONNECT_TIMEOUT,
        metavar="S",
        help=f"seconds to connect to a server (default {DEFAULT_CONNECT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--read-timeout",
        type=_seconds,
        default=DEFAULT_READ_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each server answer (default {DEFAULT_READ_TIMEOUT:g}; 3 retries)",
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
        default="auto",
        help="model weights (default auto: bf16 on CPUs with AMX (~2.7x fp32) or AVX-512 bf16 "
        "(~1.7x); fp16 on CUDA; else fp32); vectors are float32 either way",
    )
    embed.add_argument(
        "--threads", type=_positive_int, metavar="N", help="torch threads (default: one per CPU)"
    )
    embed.add_argument(
        "--columns",
        metavar="NAME=COLUMN,...",
        help="column mapping for catalogs with other names, e.g. description=product_text,sku=item_id",
    )
    embed.add_argument(
        "--full-refresh", action="store_true", help="re-embed every row, even when its text is unchanged"
    )
    embed.add_argument(
        "--vanished",
        choices=("flag", "keep", "delete"),
        default="flag",
        help="stored SKUs of an embedded region missing from the source: flag them stale (skipped by "
        "match), keep them (use when embedding a subset), or delete them (default: flag)",
    )
    embed.add_argument(
        "--max-invalid",
        metavar="N|P%%",
        help="most rejected rows before the run fails, a count (100) or a share (5%%); default: no limit",
    )
    embed.add_argument(
        "--on-bad-file",
        choices=("fail_at_end", "fail_fast"),
        default="fail_at_end",
        help="an unreadable file: embed the rest, then fail (default), or stop at once",
    )
    embed.add_argument(
        "--allowed-regions",
        type=_regions,
        metavar="A,B,...",
        help="accept only these regions (exact); rows of others are quarantined",
    )
    embed.add_argument(
        "--alias",
        type=_collection,
        metavar="NAME",
        help="after a clean run, point this alias at the collection (match through the alias)",
    )
    embed.add_argument(
        "--quarantine",
        metavar="FILE",
        help="write every rejected row and file to this Parquet file (rewritten on every run)",
    )

    match = sub.add_parser("match", help="match products across regions and write reports")
    _add_store_args(match)
    match.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="report folder to create (a folder that holds anything but an earlier report is refused)",
    )
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
        "--shards",
        type=_positive_int,
        metavar="N",
        help="a full run's candidate search (exact, or Qdrant queries with --candidates qdrant) as N "
        "shards per region pair, run here one after another (the Airflow DAG maps them to workers); "
        "same pairs and groups as one search",
    )
    match.add_argument(
        "--shard-dir",
        metavar="DIR",
        help="where the regions' search files and the shards' Parquet parts go: a folder or an fsspec "
        "URL such as s3://bucket/prefix (default: a temporary folder)",
    )

    match.add_argument(
        "--full-rematch",
        action="store_true",
        help="re-match the whole catalog instead of continuing incrementally from the match state",
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
    _add_tune_parser(sub)
    _add_review_parser(sub)
    return parser


def _add_review_parser(sub: Any) -> None:
    review = sub.add_parser("review", help="import or export reviewed pair decisions (docs/REVIEW.md)")
    actions = review.add_subparsers(
        dest="review_command", required=True, parser_class=_Parser, metavar="ACTION"
    )
    load = actions.add_parser("import", help="record decisions from a labels or pair-form file")
    _add_store_args(load)
    load.add_argument(
        "file",
        metavar="FILE",
        help="Parquet/CSV: region, sku, group_id or region_a, sku_a, "
        "region_b, sku_b, decision (match / no_match)",
    )
    load.add_argument("--reviewer", help="name recorded in the audit (default: $USER)")
    save = actions.add_parser("export", help="write the reviewed decisions as a labels Parquet")
    _add_store_args(save)
    save.add_argument("--out", required=True, metavar="FILE", help="Parquet file to write")
    save.add_argument(
        "--form",
        choices=("group", "pairs"),
        default="group",
        help="group: region, sku, group_id (what --labels accepts); pairs: every decision",
    )


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number; got {value}")
    return number


def _add_tune_parser(sub: Any) -> None:
    """``tune``: fine-tune the encoder on links the catalog already has (see polyglot_catalog.tuning)."""
    tune = sub.add_parser("tune", help="fine-tune the encoder on linked products; prints the model folder")
    tune.add_argument("--source", required=True, metavar="PATH_OR_GLOB", help="Parquet catalog to learn from")
    tune.add_argument("--labels", metavar="FILE", help="Parquet/CSV with region, sku, group_id")
    tune.add_argument(
        "--reviewed", metavar="FILE", help="reviewed decisions, labels-like Parquet (region, sku, group_id)"
    )
    tune.add_argument("--no-gtin", action="store_true", help="do not pair SKUs that share a GTIN")
    tune.add_argument("--out", required=True, metavar="DIR", help="root folder; writes DIR/NAME/vN")
    tune.add_argument("--model", metavar="BASE", help="model to start from (default: the bundled model)")
    tune.add_argument("--name", default="catalog-tuned", help="registry name of the tuned model")
    tune.add_argument("--max-minutes", type=_positive_float, default=10.0, metavar="N", help="time budget")
    tune.add_argument("--max-steps", type=_positive_int, default=300, metavar="N", help="step budget")
    tune.add_argument("--batch-size", type=_positive_int, default=32, metavar="N", help="pairs per step")
    tune.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:1 (default: cuda when present)")
    tune.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), help="default: bf16/fp16 on CUDA, fp32 on CPU"
    )
    tune.add_argument(
        "--rerank", action="store_true", help="also train the cross-encoder re-ranker NAME-reranker"
    )


class StoreFailure(Exception):
    """A store call failed; the message is already worded for the user (endpoint, operation)."""


def _client(args: argparse.Namespace, *, must_exist: bool) -> Any:
    from polyglot_catalog.errors import describe_endpoint, is_store_error, store_failure
    from polyglot_catalog.store import open_client

    if args.qdrant_path:
        path = Path(args.qdrant_path).expanduser()
        if must_exist and args.qdrant_path != ":memory:" and not path.is_dir():
            raise UserError(f"no Qdrant data at --qdrant-path {args.qdrant_path!r}")
        if path.exists() and not path.is_dir():
            raise UserError(f"--qdrant-path {args.qdrant_path!r} is a file, not a store folder")
        args.endpoint = f"embedded Qdrant at {path}"
        return open_client(path=args.qdrant_path)
    args.endpoint = args.qdrant_url.split("?")[0]
    try:
        client = open_client(
            url=args.qdrant_url,
            api_key=os.environ.get(API_KEY_ENV) or None,
            timeout=args.read_timeout,
            connect_timeout=args.connect_timeout,
        )
    except Exception as e:
        if is_store_error(e):
            raise StoreFailure(store_failure(e, args.endpoint, "client setup")) from None
        raise
    args.endpoint = describe_endpoint(client)
    return client


def _store(client: Any, collection: str, model: str | None, *, must_exist: bool) -> Any:
    from polyglot_catalog.models.registry import DEFAULT_MODEL, pinned_name
    from polyglot_catalog.store import CatalogStore, vector_name_for

    store = CatalogStore(client, collection, vector_name_for(pinned_name(model or DEFAULT_MODEL)))
    if must_exist and not store.exists():
        raise UserError(f"collection {collection!r} does not exist")
    return store


def _store_folders(args: argparse.Namespace) -> list[Path]:
    return [Path(args.qdrant_path)] if args.qdrant_path and args.qdrant_path != ":memory:" else []


def _check_quarantine_path(value: str, protected: Sequence[Path]) -> Path:
    """The quarantine file to (re)write: refused when it is a folder, inside a store folder, or an
    existing file that is not a quarantine file (it would be overwritten)."""
    import pyarrow.parquet as pq

    path = Path(value).expanduser().resolve()
    for store in protected:
        if path.is_relative_to(store.expanduser().resolve()):
            raise UserError(f"--quarantine {value!r} is inside the Qdrant store folder {str(store)!r}")
    if path.is_dir():
        raise UserError(f"--quarantine {value!r} is a folder; name a .parquet file")
    if path.exists():
        try:
            names = pq.read_schema(path).names
        except Exception:
            names = []
        if not {"source_file", "reason"} <= set(names):
            raise UserError(
                f"--quarantine {value!r} exists and is not a quarantine file: refusing to overwrite it"
            )
    if not path.parent.is_dir():
        raise UserError(f"--quarantine {value!r}: folder {str(path.parent)!r} does not exist")
    return path


def _embed_options(args: argparse.Namespace) -> dict[str, Any]:
    """Every embed option checked, before the store is opened or the model loads."""
    from polyglot_catalog.embed import parse_max_invalid
    from polyglot_catalog.names import check_region_name
    from polyglot_catalog.reading import catalog_files, parse_column_map

    catalog_files(args.source)  # a missing source, or only labels.parquet
    options: dict[str, Any] = {
        "column_map": parse_column_map(args.columns),
        "full_refresh": args.full_refresh,
        "vanished": args.vanished,
        "on_bad_file": args.on_bad_file,
    }
    if args.max_invalid is not None:
        parse_max_invalid(args.max_invalid)
        options["max_invalid"] = args.max_invalid
    if args.allowed_regions:
        options["allowed_regions"] = [check_region_name(r) for r in args.allowed_regions]
    if args.alias == args.collection:
        raise UserError(f"--alias {args.alias!r} must differ from --collection")
    if args.quarantine:
        options["quarantine_path"] = _check_quarantine_path(args.quarantine, _store_folders(args))
    return options


def _cmd_embed(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.embed import embed_catalog
    from polyglot_catalog.encoding import Encoder

    options = _embed_options(args)
    client = _client(args, must_exist=False)  # lock, permissions, server: before the model loads
    try:
        _store(client, args.collection, "probe", must_exist=False).exists()
        model = {"model": args.model} if args.model else {}
        encoder = Encoder(**model, precision=args.precision, threads=args.threads)  # ValueError: one line
        store = _store(client, args.collection, encoder.model_name, must_exist=False)
        with _progress_bar() as progress:
            summary = embed_catalog(args.source, store, encoder, progress=progress, **options)
        if args.alias:
            store.switch_alias(args.alias)
            summary["alias"] = args.alias
    finally:
        client.close()
    _say_counts(summary)
    return summary


def _say_counts(summary: dict[str, Any]) -> None:
    """What the operator's log says, on stderr: rows embedded / skipped / set aside, bad files."""
    quarantined = summary.get("quarantined", 0)
    where = f" (in {summary['quarantine_path']})" if summary.get("quarantine_path") else ""
    if quarantined and not where:
        where = " (pass --quarantine FILE to keep them all; a sample is in the JSON)"
    bad = summary.get("bad_files") or {}
    print(
        f"{PROG} embed: {summary.get('embedded', 0)} embedded, {summary.get('skipped_unchanged', 0)} "
        f"unchanged, {quarantined} quarantined{where}, {len(bad)} bad file(s), "
        f"{summary.get('flagged', 0)} flagged stale, {summary.get('deleted', 0)} deleted",
        file=sys.stderr,
    )


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


def _reviewed(client: Any, collection: str) -> Any:
    """The collection's reviewed decisions for the next run (docs/REVIEW.md), None when there are none."""
    from polyglot_catalog.review import reviewed_decisions

    return reviewed_decisions(client, collection)


def _cmd_match(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.matching.run import run_match
    from polyglot_catalog.models.registry import DEFAULT_MODEL
    from polyglot_catalog.reports import check_report_path, write_reports
    from polyglot_catalog.store import single_region_warning

    if args.labels and not Path(args.labels).is_file():
        raise UserError(f"labels file {args.labels!r} does not exist")
    check_report_path(args.out, _store_folders(args))  # before any work: nothing of the user's is replaced
    client = _client(args, must_exist=True)
    try:
        store = _store(client, args.collection, args.model, must_exist=True)
        warning = single_region_warning(args.collection, args.regions or store.regions())
        if warning:
            logging.getLogger("polyglot_catalog.cli").warning(warning)
        run_id = _run_id(args.run_id)
        # the report is written under the state lock, before the state: a failed write changes nothing
        result, report_dir = run_match(
            store,
            run_id=run_id,
            write_report=lambda r: write_reports(
                Path(args.out), r, run_id=run_id, protected=_store_folders(args)
            ),
            collection=args.collection,
            model=args.model or DEFAULT_MODEL,
            regions=args.regions,
            threshold=args.threshold,
            labels=args.labels,
            fit_on_labels=args.calibrate_on_labels,
            full_rematch=args.full_rematch,
            decisions=_reviewed(client, args.collection),
            candidates=args.candidates,
            **({} if args.hnsw_ef is None else {"hnsw_ef": args.hnsw_ef}),
            **({} if args.shards is None else {"shards": args.shards, "shard_dir": args.shard_dir}),
        )
    finally:
        client.close()
    metrics = (result.summary.get("metrics") or {}).get("overall")
    return {
        "report_dir": str(report_dir),
        "run_id": run_id,
        "mode": result.summary.get("mode"),
        "full_run_reason": result.summary.get("full_run_reason"),
        "calibrated_on_labels": result.summary.get("calibrated_on_labels"),
        "changes": result.summary.get("changes"),
        "pairs": result.pair_count,
        "matches": len(result.matches),
        "unmatched": len(result.unmatched),
        "metrics": metrics,
    }


def _cmd_review(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.review import ReviewStore
    from polyglot_catalog.review.io import read_decisions, write_decisions

    decisions = read_decisions(args.file) if args.review_command == "import" else None
    client = _client(args, must_exist=True)
    try:
        if not client.collection_exists(args.collection):
            raise UserError(f"collection {args.collection!r} does not exist")
        review = ReviewStore(client, args.collection)
        if decisions is not None:
            from polyglot_catalog.review.apply import current_hashes

            decisions = current_hashes(client, args.collection, decisions)
            reviewer = args.reviewer or os.environ.get("USER") or "cli"
            changed = review.import_decisions(decisions, reviewer)
            return {"collection": args.collection, "decisions": len(decisions), "changed": changed}
        frame = review.decisions()
        out = write_decisions(frame, args.out, form=args.form)
        return {"collection": args.collection, "decisions": len(frame), "out": str(out), "form": args.form}
    finally:
        client.close()


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


def _cmd_tune(args: argparse.Namespace) -> dict[str, Any]:
    from polyglot_catalog.models.registry import DEFAULT_MODEL
    from polyglot_catalog.reading import list_sources
    from polyglot_catalog.tuning import TuneConfig, tune_catalog
    from polyglot_catalog.tuning.rerank import RerankConfig

    list_sources(args.source)  # fail on a bad source before anything loads
    config = TuneConfig(
        max_steps=args.max_steps,
        max_minutes=args.max_minutes,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
    )
    return tune_catalog(
        args.source,
        args.out,
        labels=args.labels,
        reviewed=args.reviewed,
        use_gtin=not args.no_gtin,
        model=args.model or DEFAULT_MODEL,
        name=args.name,
        config=config,
        rerank=RerankConfig(max_minutes=args.max_minutes, device=args.device, precision=args.precision)
        if args.rerank
        else None,
    )


COMMANDS = {
    "embed": _cmd_embed,
    "match": _cmd_match,
    "lookup": _cmd_lookup,
    "stats": _cmd_stats,
    "build-model": _cmd_build_model,
    "tune": _cmd_tune,
    "review": _cmd_review,
}


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or environment (print one line), as opposed to bugs."""
    errors: list[type[BaseException]] = [UserError, ValueError, OSError, RuntimeError]
    try:
        from qdrant_client.http.exceptions import ApiException

        errors.append(ApiException)
    except ImportError:  # pragma: no cover - qdrant-client is a hard dependency
        pass
    return tuple(errors)


@contextmanager
def _progress_logging(verbose: bool, secrets: Sequence[str | None]) -> Iterator[None]:
    """Package log lines on stderr while one command runs, secrets scrubbed; root logger untouched."""
    from polyglot_catalog.errors import ScrubbingFilter, scrub

    package_log = logging.getLogger("polyglot_catalog")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ScrubbingFilter(secrets))
    saved = (package_log.level, package_log.propagate)
    package_log.addHandler(handler)
    package_log.setLevel(logging.DEBUG if verbose else logging.INFO)
    package_log.propagate = False

    def one_line_warning(message: Any, category: type[Warning], *_: Any, **__: Any) -> None:
        """Library warnings (e.g. an API key over plain http) as one line, without a source excerpt."""
        print(scrub(f"{PROG}: warning: {message}", secrets), file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            yield
    finally:
        package_log.removeHandler(handler)
        package_log.level, package_log.propagate = saved


def _inside_store(filename: Any, qdrant_path: str | None) -> bool:
    """Whether a failed file operation was on the store folder (not a report or quarantine file)."""
    if not filename or not qdrant_path or qdrant_path == ":memory:":
        return False
    return Path(str(filename)).resolve().is_relative_to(Path(qdrant_path).expanduser().resolve())


def _failure_message(error: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """The one line for a failed command, and the exit code. Never a raw response body."""
    from polyglot_catalog.errors import first_line, is_store_error, store_failure

    endpoint = getattr(args, "endpoint", None)
    qdrant_path, qdrant_url = getattr(args, "qdrant_path", None), getattr(args, "qdrant_url", None)
    if isinstance(error, StoreFailure | UserError):
        return str(error), EXIT_INPUT
    if type(error).__name__ == "StoreUnavailableError":  # embed already named endpoint, step, writes
        return str(error), EXIT_INPUT
    if (
        isinstance(error, OSError)
        and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        and _inside_store(error.filename, qdrant_path)
    ):
        return (
            f"cannot use the Qdrant store at {qdrant_path!r}: {first_line(error)}; the embedded store "
            "needs write access to its folder even to read (it takes a lock file there): copy it to a "
            "writable folder (cp -a) or serve it with a Qdrant server",
            EXIT_INPUT,
        )
    if endpoint and qdrant_url and is_store_error(error):
        return store_failure(error, endpoint), EXIT_INPUT
    if isinstance(error, _input_errors()):
        text = " ".join(str(error).split()) if not is_store_error(error) else first_line(error)
        return text or type(error).__name__, EXIT_INPUT
    return (
        f"internal error: {first_line(error)} (a bug: please report it; run with -v for the traceback)",
        EXIT_INTERNAL,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; print its JSON result on stdout. Returns the process exit code.

    Nothing the command prints or logs holds the API key (``$QDRANT_API_KEY``) or URL credentials.
    """
    from polyglot_catalog.errors import register_secret, scrub

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already printed)
        return int(e.code or 0)
    secrets = [os.environ.get(API_KEY_ENV)]
    register_secret(secrets[0])
    result: dict[str, Any] | None = None
    try:
        with _progress_logging(args.verbose, secrets):
            result = COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        message, code = _failure_message(e, args)
        summary = getattr(e, "summary", None)
        if isinstance(summary, dict):  # an embed that finished what it could: its counts, as on success
            print(scrub(json.dumps(summary, indent=2, default=str), secrets))
            _say_counts(summary)
        if code == EXIT_INTERNAL and args.verbose:
            import traceback

            print(scrub("".join(traceback.format_exception(e)), secrets), file=sys.stderr)
        print(scrub(f"{PROG} {args.command}: error: {' '.join(message.split())}", secrets), file=sys.stderr)
        return code
    print(scrub(json.dumps(result, indent=2, default=str), secrets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
