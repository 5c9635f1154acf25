"""Report folder: file contents, atomic writes, path safety and escaping of hostile product text."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.matching.result import MatchResult
from polyglot_catalog.reports import html as report_html
from polyglot_catalog.reports import render_html, safe_report_dir, write_reports
from polyglot_catalog.reports import writer as report_writer

REPORT_FILES = {
    "pairs.parquet",
    "groups.parquet",
    "unmatched.parquet",
    "changes.parquet",
    "summary.json",
    "report.html",
    ".polyglot-report",
}  # make_result() has no duplicates table (a result from before duplicate detection)
DATA_FILES = REPORT_FILES - {"report.html", ".polyglot-report"} | {"duplicates.parquet"}
THRESHOLD = 0.74

# Product text is hostile input; every string here must reach the page as text.
SCRIPT_TEXT = "<script>document.title='PWNED';document.body.setAttribute('data-pwned','1')</script>"


def hostile_strings(port: int = 9) -> dict[str, str]:
    """Injection attempts; ``port`` lets a browser test see a leaked request on its own server."""
    return {
        "script": SCRIPT_TEXT,
        "img": f'<img id="pwned-img" src="http://127.0.0.1:{port}/leak.png" '
        "onerror=\"document.title='PWNED'\">",
        "link": '<a id="pwned-link" href="javascript:alert(1)">javascript:alert(1)</a>',
        "attr": '"><svg id="pwned-svg" onload="document.title=\'PWNED\'"></svg>',
        "style": f"<style>body{{background:url(http://127.0.0.1:{port}/leak.css)}}</style>",
    }


FAMILIES = [
    # (name, DE text, FR text, US text); None = not sold there
    (
        "BILLY",
        "BILLY Bücherregal, weiß, 80x28x202 cm",
        "BILLY Bibliothèque, blanc, 80x28x202 cm",
        "BILLY Bookcase, white, 80x28x202 cm",
    ),
    (
        "KALLAX",
        "KALLAX Regal, Eicheneffekt, 77x147 cm",
        "KALLAX Étagère, effet chêne, 77x147 cm",
        'KALLAX Shelf unit, oak effect, 30 3/8x57 7/8"',
    ),
    (
        "POÄNG",
        "POÄNG Sessel, Birkenfurnier/Knisa hellbeige",
        "POÄNG Fauteuil, plaqué bouleau/Knisa beige clair",
        "POÄNG Armchair, birch veneer/Knisa light beige",
    ),
    (
        "MALM",
        "MALM Kommode mit 6 Schubladen, weiß, 160x78 cm",
        "MALM Commode 6 tiroirs, blanc, 160x78 cm",
        'MALM 6-drawer dresser, white, 63x30 3/4"',
    ),
    ("LACK", "LACK Couchtisch, schwarzbraun, 90x55 cm", "LACK Table basse, brun noir, 90x55 cm", None),
    (
        "HEMNES",
        "HEMNES Bettgestell, weiß gebeizt, 160x200 cm",
        "HEMNES Cadre de lit, teinté blanc, 160x200 cm",
        "HEMNES Bed frame, white stain, Queen",
    ),
    ("FÄRGRIK", "FÄRGRIK Becher, 30 cl, verschiedene Farben", None, "FÄRGRIK Mug, 10 oz, assorted colors"),
    (
        "IVAR",
        "IVAR Schrank, Kiefer, 80x30x83 cm",
        "IVAR Armoire, pin, 80x30x83 cm",
        "IVAR Cabinet, pine, 80x30x83 cm",
    ),
    (
        "STRANDMON",
        "STRANDMON Ohrensessel, Nordvalla dunkelgrau",
        "STRANDMON Fauteuil à oreilles, Nordvalla gris foncé",
        "STRANDMON Wing chair, Nordvalla dark gray",
    ),
    (
        "RÅSKOG",
        "RÅSKOG Servierwagen, dunkelgrau, 35x45x78 cm",
        "RÅSKOG Desserte, gris foncé, 35x45x78 cm",
        None,
    ),
]
REGIONS = ("DE", "FR", "US")
EVIDENCE = ["ev_numbers", "ev_codes", "ev_names", "ev_gtin", "conflict_numbers"]


def make_result(*, port: int = 9, labelled: bool = True, long_text: str | None = None) -> MatchResult:
    """A realistic run over three regions, with hostile text in texts, SKUs, explain and unmatched."""
    rng = np.random.default_rng(7)
    hostile = hostile_strings(port)
    products: dict[str, list[tuple[str, str, str]]] = {
        r: [] for r in REGIONS
    }  # region -> (sku, family, text)
    for i, (family, *texts) in enumerate(FAMILIES):
        for region, text in zip(REGIONS, texts, strict=True):
            if text is not None:
                products[region].append((f"{region[0]}{100200 + i * 7:06d}", family, text))
    # hostile text rides along inside real products
    products["DE"][1] = (products["DE"][1][0], "KALLAX", products["DE"][1][2] + " " + hostile["script"])
    products["FR"][1] = (products["FR"][1][0], "KALLAX", hostile["img"] + " " + products["FR"][1][2])
    products["US"][0] = (products["US"][0][0], "BILLY", products["US"][0][2] + " " + hostile["link"])
    if long_text is not None:
        products["DE"][0] = (products["DE"][0][0], "BILLY", long_text)
    # variants that must not be merged: same family, different size
    products["FR"].append(("F909001", "BILLY-variant", "BILLY Bibliothèque, blanc, 40x28x106 cm"))
    products["US"].append(
        ('"><svg onload=alert(1)>', "ORPHAN", hostile["attr"] + " Lamp shade " + hostile["style"])
    )

    rows = []
    for ai, a in enumerate(REGIONS):
        for b in REGIONS[ai + 1 :]:
            for sku_a, fam_a, text_a in products[a]:
                for sku_b, fam_b, text_b in products[b]:
                    same = fam_a == fam_b
                    variant = fam_b.startswith(fam_a) or fam_a.startswith(fam_b)
                    if not (same or variant or rng.random() < 0.35):
                        continue
                    cosine = float(
                        rng.uniform(0.82, 0.95)
                        if same
                        else rng.uniform(0.78, 0.88)
                        if variant
                        else rng.uniform(0.35, 0.72)
                    )
                    ev_numbers = (
                        1.0 if same and "cm" in text_a and "cm" in text_b else float(rng.uniform(0, 0.4))
                    )
                    conflict = 1.0 if variant and not same else 0.0
                    score = cosine + 0.08 * ev_numbers - 0.3 * conflict
                    if same:
                        decision = "match" if score >= THRESHOLD else "below_threshold"
                    elif variant:
                        decision = "conflict"
                    else:
                        decision = "below_threshold" if rng.random() < 0.7 else "not_mutual"
                    explain = f"cosine {cosine:.2f}; numbers {ev_numbers:.2f}"
                    if conflict:
                        explain += "; sizes differ: 80x28x202 vs 40x28x106"
                    if fam_a == "KALLAX" and same:
                        explain += " " + hostile["script"]
                    rows.append(
                        {
                            "region_a": a,
                            "sku_a": sku_a,
                            "region_b": b,
                            "sku_b": sku_b,
                            "score": score,
                            "cosine": cosine,
                            "decision": decision,
                            "ev_numbers": ev_numbers,
                            "ev_codes": float(same),
                            "ev_names": float(same or variant),
                            "ev_gtin": 0.0,
                            "conflict_numbers": conflict,
                            "explain": explain,
                            "text_a": text_a,
                            "text_b": text_b,
                        }
                    )
    pairs = pd.DataFrame(rows)

    matched: dict[tuple[str, str], str] = {}
    families = {sku: fam for region in REGIONS for sku, fam, _ in products[region]}
    for row in pairs[pairs["decision"] == "match"].itertuples():
        gid = f"g-{families[row.sku_a]}"
        matched[(row.region_a, row.sku_a)] = gid
        matched[(row.region_b, row.sku_b)] = gid
    groups = pd.DataFrame(
        [
            {"group_id": g, "region": r, "sku": s}
            for (r, s), g in sorted(matched.items(), key=lambda kv: kv[1])
        ]
    )
    unmatched_rows = []
    for region in REGIONS:
        for sku, _, text in products[region]:
            if (region, sku) in matched:
                continue
            cand = pairs[
                ((pairs.region_a == region) & (pairs.sku_a == sku))
                | ((pairs.region_b == region) & (pairs.sku_b == sku))
            ]
            best = cand.sort_values("score").tail(1)
            if len(best):
                b = best.iloc[0]
                other_a = b.region_a != region
                unmatched_rows.append(
                    {
                        "region": region,
                        "sku": sku,
                        "text": text,
                        "best_score": float(b.score),
                        "best_region": b.region_a if other_a else b.region_b,
                        "best_sku": b.sku_a if other_a else b.sku_b,
                    }
                )
            else:
                unmatched_rows.append(
                    {
                        "region": region,
                        "sku": sku,
                        "text": text,
                        "best_score": np.nan,
                        "best_region": None,
                        "best_sku": None,
                    }
                )
    unmatched = pd.DataFrame(unmatched_rows)

    counts = {
        f"{a}|{b}": {"candidates": len(g), "matches": int((g.decision == "match").sum())}
        for (a, b), g in pairs.groupby(["region_a", "region_b"])
    }
    summary: dict = {
        "model": "multilingual-e5-small-nano4",
        "collection": "catalog_" + hostile["script"],
        "threshold": THRESHOLD,
        "regions": list(REGIONS),
        "counts": counts,
        "timings": {"candidates": 3.42, "evidence": np.float64(1.18), "assignment": 0.07, "groups": 0.01},
    }
    if labelled:
        thresholds = np.round(np.arange(0.5, 0.981, 0.02), 3)
        sweep = []
        for t in thresholds:
            precision = float(min(1.0, 0.6 + 0.45 * (t - 0.5)))
            recall = float(max(0.0, 1.0 - 2.1 * max(0.0, t - 0.62)))
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            sweep.append({"threshold": float(t), "precision": precision, "recall": recall, "f1": f1})
        per = {"precision": 0.91, "recall": 0.86, "f1": 0.884, "top1": 0.88, "tp": 19, "fp": 2, "fn": 3}
        summary["metrics"] = {
            "overall": per,
            "by_pair": {k: {**per, "f1": np.float32(0.8 + 0.03 * i)} for i, k in enumerate(counts)},
            "threshold_sweep": sweep,
            "pr_curve": sweep,
        }
        summary["metrics"]["by_pair"]["DE|FR"]["top1"] = float("nan")
    return MatchResult(pairs=pairs, groups=groups, unmatched=unmatched, summary=summary)


@pytest.fixture
def result() -> MatchResult:
    return make_result()


class _TagCollector(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer would see them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def parse_tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _TagCollector()
    parser.feed(page)
    parser.close()
    return parser.tags


# ---------------------------------------------------------------------------------------------
# files and contents


def test_write_reports_writes_every_file_and_tables_round_trip(tmp_path: Path, result: MatchResult) -> None:
    folder = write_reports(tmp_path / "reports" / "run-1", result, run_id="manual__2025-01-01T00:00:00+00:00")

    assert folder == (tmp_path / "reports" / "run-1").absolute()
    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    for name, frame in (("pairs", result.pairs), ("groups", result.groups), ("unmatched", result.unmatched)):
        back = pd.read_parquet(folder / f"{name}.parquet")
        pd.testing.assert_frame_equal(back, frame.reset_index(drop=True), check_dtype=False)
    assert set(pd.read_parquet(folder / "pairs.parquet").columns) >= {
        "region_a",
        "sku_a",
        "region_b",
        "sku_b",
        "score",
        "cosine",
        "decision",
        "explain",
        *EVIDENCE,
    }
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert "manual__2025-01-01T00:00:00+00:00" in page


def test_summary_json_is_strict_json_with_run_id_and_row_counts(tmp_path: Path, result: MatchResult) -> None:
    folder = write_reports(tmp_path / "r", result, run_id="run-42")
    raw = (folder / "summary.json").read_text(encoding="utf-8")

    summary = json.loads(raw, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert summary["run_id"] == "run-42"
    assert summary["model"] == result.summary["model"]
    assert summary["threshold"] == THRESHOLD
    assert summary["counts"] == result.summary["counts"]
    assert summary["timings"]["evidence"] == pytest.approx(1.18)  # numpy float64 became a JSON number
    assert summary["metrics"]["by_pair"]["DE|FR"]["top1"] is None  # NaN became null
    assert summary["metrics"]["by_pair"]["DE|US"]["f1"] == pytest.approx(0.83)  # numpy float32
    assert summary["metrics"]["threshold_sweep"] == result.summary["metrics"]["threshold_sweep"]
    assert summary["report"]["rows"] == {
        "pairs": len(result.pairs),
        "groups": len(result.groups),
        "unmatched": len(result.unmatched),
    }
    assert "run_id" not in result.summary, "the caller's summary must not be mutated"


def test_success_leaves_nothing_but_the_folder(tmp_path: Path, result: MatchResult) -> None:
    write_reports(tmp_path / "run", result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_empty_result_still_writes_a_readable_report(tmp_path: Path) -> None:
    empty = MatchResult(
        pairs=pd.DataFrame(columns=["region_a", "sku_a", "region_b", "sku_b", "score", "cosine", "decision"]),
        groups=pd.DataFrame(columns=["group_id", "region", "sku"]),
        unmatched=pd.DataFrame(columns=["region", "sku", "text", "best_score", "best_region", "best_sku"]),
        summary={},
    )
    folder = write_reports(tmp_path / "empty", empty)
    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "No scored pairs to plot." in page
    assert "This run had no labels" in page
    assert len(pd.read_parquet(folder / "pairs.parquet")) == 0


# ---------------------------------------------------------------------------------------------
# atomicity


def test_failure_mid_write_leaves_no_final_folder_and_no_temp(
    tmp_path: Path, result: MatchResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parquet files are already in the temp folder when the page render fails."""

    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report_writer, "render_html", boom)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_reports(tmp_path / "run", result)
    assert not (tmp_path / "run").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_failure_while_replacing_keeps_the_old_report_intact(
    tmp_path: Path, result: MatchResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_reports(tmp_path / "run", result, run_id="old")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def half_written(frame: pd.DataFrame, path: Path, *args: object, **kwargs: object) -> None:
        Path(path).write_bytes(b"PAR1 truncated")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_reports(folder, result, run_id="new")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_existing_folder_is_replaced_as_a_whole(tmp_path: Path, result: MatchResult) -> None:
    folder = write_reports(tmp_path / "run", result, run_id="first")
    (folder / "stray.txt").write_text("from an older layout")
    write_reports(folder, make_result(labelled=False), run_id="second")

    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    assert json.loads((folder / "summary.json").read_text())["run_id"] == "second"
    assert "metrics" not in json.loads((folder / "summary.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_overwrite_false_refuses_and_touches_nothing(tmp_path: Path, result: MatchResult) -> None:
    folder = write_reports(tmp_path / "run", result, run_id="first")
    before = (folder / "summary.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_reports(folder, result, run_id="second", overwrite=False)
    assert (folder / "summary.json").read_bytes() == before


def test_out_dir_that_is_a_file_is_refused(tmp_path: Path, result: MatchResult) -> None:
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(NotADirectoryError):
        write_reports(tmp_path / "run", result)


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, sys.argv[2])
    from test_reports import make_result
    from polyglot_catalog.reports import writer

    real_fsync = writer._fsync_file
    def fsync_then_die(path):
        real_fsync(path)
        if path.name == "summary.json":  # Parquet and summary written, page not yet
            os.kill(os.getpid(), signal.SIGKILL)
    writer._fsync_file = fsync_then_die
    writer.write_reports(sys.argv[1], make_result(), run_id="killed")
    """
)


def test_killed_writer_leaves_only_a_hidden_temp_folder_that_the_next_run_removes(
    tmp_path: Path, result: MatchResult
) -> None:
    target = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(target), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr

    assert not target.exists(), "a killed run must not leave a folder under the final name"
    leftovers = [p for p in tmp_path.iterdir() if p.name != ".run.lock"]
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith(".run.tmp-"), "debris must be hidden and marked as temporary"
    assert "report.html" not in {p.name for p in leftovers[0].iterdir()}

    folder = write_reports(target, result, run_id="rerun")
    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_run_killed_between_renames_gets_its_old_report_back(
    tmp_path: Path, result: MatchResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after moving the old folder aside, before moving the new one in: the next writer
    restores the old report before trying again, so a second failure still leaves it in place."""
    folder = write_reports(tmp_path / "run", result, run_id="old")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    folder.rename(tmp_path / ".run.old-deadbeef0000")  # the state such a kill leaves
    (tmp_path / ".run.tmp-deadbeef0000").mkdir()

    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(report_writer, "render_html", boom)
    with pytest.raises(RuntimeError):
        write_reports(tmp_path / "run", result, run_id="new")

    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_concurrent_writers_of_one_folder_never_mix_files(tmp_path: Path) -> None:
    """Writers hold a per-folder lock, so the survivor is one run's complete output."""
    results = {f"run-{i}": make_result(labelled=i % 2 == 0) for i in range(4)}
    errors: list[BaseException] = []

    def write(run_id: str) -> None:
        try:
            write_reports(tmp_path / "shared", results[run_id], run_id=run_id)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(run_id,)) for run_id in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    folder = tmp_path / "shared"
    assert {p.name for p in folder.iterdir()} == REPORT_FILES
    winner = json.loads((folder / "summary.json").read_text())["run_id"]
    assert f"run <b>{winner}</b>" in (folder / "report.html").read_text()
    assert ("metrics" in json.loads((folder / "summary.json").read_text())) == (int(winner[-1]) % 2 == 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


# ---------------------------------------------------------------------------------------------
# paths


@pytest.mark.parametrize(
    "name",
    [
        "../escape",
        "a/../../escape",
        "a/../b",
        "..",
        "/etc",
        "/tmp/x",
        "~/reports",
        "",
        "  ",
        ".",
        "a\x00b",
        "..\\escape",
    ],
)
def test_safe_report_dir_refuses_names_outside_the_root(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="report folder"):
        safe_report_dir(tmp_path / "reports", name)


def test_safe_report_dir_refuses_symlinks_pointing_outside(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    (root / "nested").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "nested" / "deep").symlink_to(Path("..") / ".." / "elsewhere")

    for name in ("link", "link/run-1", "nested/deep/run-1"):
        with pytest.raises(ValueError, match="outside the reports root"):
            safe_report_dir(root, name)


def test_safe_report_dir_accepts_names_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    (root / "inner").mkdir(parents=True)
    (root / "alias").symlink_to(root / "inner", target_is_directory=True)
    resolved_root = root.resolve()

    assert safe_report_dir(root, "run-1") == resolved_root / "run-1"
    assert safe_report_dir(str(root), "2025/01/manual__2025-01-01T00:00:00+00:00") == (
        resolved_root / "2025" / "01" / "manual__2025-01-01T00:00:00+00:00"
    )
    assert safe_report_dir(root, "alias/run") == resolved_root / "inner" / "run"
    assert safe_report_dir(root, "..dots-are-fine..") == resolved_root / "..dots-are-fine.."


# ---------------------------------------------------------------------------------------------
# escaping and self-containment

ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "link",
    "title",
    "style",
    "body",
    "main",
    "header",
    "nav",
    "a",
    "section",
    "h1",
    "h2",
    "h3",
    "ul",
    "li",
    "b",
    "div",
    "p",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
    "small",
    "code",
    "figure",
    "figcaption",
    "svg",
    "text",
    "line",
    "rect",
    "polyline",
    "circle",
    "article",
    "footer",
    "mark",
}


def test_hostile_product_text_renders_only_as_text(result: MatchResult) -> None:
    page = render_html(result, run_id="<b>run</b>")
    tags = parse_tags(page)

    assert {tag for tag, _ in tags} <= ALLOWED_TAGS, "product text created elements"
    assert [a for _, a in tags if a.get("id", "").startswith("pwned")] == []
    for tag, attrs in tags:
        assert not [k for k in attrs if k.startswith("on")], f"event handler on <{tag}>"
        assert "src" not in attrs
        if "href" in attrs:
            # in-page anchors, the empty icon, or a data file of the folder by its fixed name
            assert attrs["href"].startswith("#") or attrs["href"] in ({"data:,"} | DATA_FILES), attrs
        assert "javascript:" not in " ".join(str(v) for v in attrs.values())
    assert "<script" not in page.lower()
    assert "&lt;script&gt;document.title=&#39;PWNED&#39;" in page
    assert "onerror=&#34;document.title" in page
    assert "&lt;b&gt;run&lt;/b&gt;" in page
    assert "&#34;&gt;&lt;svg onload=alert(1)&gt;" in page  # the hostile SKU


def test_report_loads_nothing_and_forbids_scripts(result: MatchResult) -> None:
    page = render_html(result)
    tags = parse_tags(page)

    csp = [a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "script-src" not in csp[0]
    style_block = page[page.index("<style>") : page.index("</style>")]
    assert "url(" not in style_block and "@import" not in style_block and "@font-face" not in style_block
    for _, attrs in tags:
        for key, value in attrs.items():
            if key in ("style", "href", "xmlns", "content"):
                assert "http" not in str(value) and "url(" not in str(value), (key, value)


def test_template_environment_forces_autoescape() -> None:
    env = report_html._environment()
    assert env.autoescape is True
    assert env.from_string("{{ x }}").render(x="<i>") == "&lt;i&gt;"


def test_one_megabyte_text_is_shortened_in_the_page_but_kept_in_parquet(tmp_path: Path) -> None:
    long_text = "BILLY Bücherregal 80x28x202 cm " + "x" * 1_000_000
    folder = write_reports(tmp_path / "r", make_result(long_text=long_text))
    page = (folder / "report.html").read_text(encoding="utf-8")

    assert len(page) < 400_000
    assert "x" * 1000 not in page
    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert long_text in set(pairs["text_a"])


# ---------------------------------------------------------------------------------------------
# what a reader sees


def test_page_shows_headline_figures_charts_and_tables(result: MatchResult) -> None:
    page = render_html(result)
    n_products = len(
        pd.concat(
            [
                result.groups[["region", "sku"]],
                result.unmatched[["region", "sku"]],
            ]
        ).drop_duplicates()
    )

    for heading in (
        "Overview",
        "Score distribution",
        "Region-pair matrix",
        "Quality against labels",
        "Sample pairs",
        "Unmatched products",
        "Timings",
    ):
        assert f">{heading}</h2>" in page
    assert f'<div class="value">{n_products}</div>' in page
    assert f'<div class="value">{len(result.matches)}</div>' in page
    assert "multilingual-e5-small-nano4" in page and "0.740" in page
    for key, value in result.summary["counts"].items():
        a, b = key.split("|")
        assert (
            f'<span class="region">{a}</span> ↔ <span class="region">{b}</span></td>\n'
            f'              <td class="n">{value["candidates"]}</td><td class="n">{value["matches"]}</td>'
        ) in page
    assert 'aria-label="Histogram of pair scores' in page
    assert page.count('class="bar acc"') >= 3 and page.count('class="bar rej"') >= 3
    assert 'class="thr"' in page
    assert 'aria-label="Precision-recall curve' in page and 'class="marker"' in page
    assert '<tr class="chosen ' in page and "best" in page
    assert "3.42 s" in page  # timings
    # every unmatched SKU is a cell of the unmatched table, hostile ones included (as text)
    shown = _unmatched_cells(page)
    assert {
        (str(r), str(s)) for r, s in zip(result.unmatched["region"], result.unmatched["sku"], strict=True)
    } <= (shown)


def test_samples_show_evidence_and_explain(result: MatchResult) -> None:
    context = report_html.build_context(result, sample_size=12)
    samples = context["samples"]

    assert samples["accepted"] and samples["rejected"] and samples["conflicts"]
    accepted_scores = [p["score"] for p in samples["accepted"]]
    assert accepted_scores == sorted(accepted_scores), "borderline accepted pairs come first"
    assert min(accepted_scores) == pytest.approx(result.matches["score"].min())
    rejected_scores = [p["score"] for p in samples["rejected"]]
    assert rejected_scores == sorted(rejected_scores, reverse=True)
    conflict = samples["conflicts"][0]
    assert "sizes differ" in conflict["explain"]
    assert {"name": "conflict_numbers", "value": 1.0, "kind": "conflict", "show": True} in conflict[
        "evidence"
    ]
    assert [e["name"] for e in samples["accepted"][0]["evidence"]] == EVIDENCE


def test_pairs_show_their_sentence_alignment_only_when_the_matcher_had_it() -> None:
    with_sentences = make_result()
    with_sentences.pairs["sentences"] = 0.8125
    assert "sentences aligned 0.81" in render_html(with_sentences)
    without = make_result()
    without.pairs["sentences"] = float("nan")  # matched without sentence vectors
    assert "sentences aligned" not in render_html(without)


def test_unlabelled_run_says_so_instead_of_empty_charts() -> None:
    page = render_html(make_result(labelled=False))
    assert "This run had no labels" in page
    assert 'class="marker"' not in page and "Threshold sweep" not in page


def test_diff_marks_numbers_found_in_one_text_only() -> None:
    seg_a, seg_b = report_html.diff_segments(
        "BILLY Bücherregal, weiß, 80x28x202 cm", "BILLY Bibliothèque, blanc, 40x28x106 cm"
    )

    assert "".join(s.text for s in seg_a) == "BILLY Bücherregal, weiß, 80x28x202 cm"
    marked_a = {s.text: s.kind for s in seg_a if s.kind}
    marked_b = {s.text: s.kind for s in seg_b if s.kind}
    assert marked_a["BILLY"] == "shared" and marked_a["28"] == "shared" and marked_a["cm"] == "shared"
    assert marked_a["80"] == "only" and marked_a["202"] == "only"
    assert marked_b["40"] == "only" and marked_b["106"] == "only"
    assert "Bücherregal" not in marked_a, "translated words are not flagged"


def test_diff_treats_decimal_comma_and_case_as_equal() -> None:
    seg_a, seg_b = report_html.diff_segments("Lampe 1,5 m LED", "lamp 1.5 m led")
    assert {s.text: s.kind for s in seg_a if s.kind} == {"1,5": "shared", "LED": "shared"}
    assert not [s for s in seg_b if s.kind == "only"]


class _TextCells(HTMLParser):
    """Rows of one table (by class) as lists of cell texts, entities decoded as a browser shows them."""

    def __init__(self, table_class: str) -> None:
        super().__init__(convert_charrefs=True)
        self.table_class = table_class
        self.depth = 0
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and self.table_class in (dict(attrs).get("class") or "").split():
            self.depth = 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        elif self.depth and tag == "table":
            self.depth = 0

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _table_rows(page: str, table_class: str) -> list[list[str]]:
    parser = _TextCells(table_class)
    parser.feed(page)
    return [row for row in parser.rows if row]


def _unmatched_cells(page: str) -> set[tuple[str, str]]:
    """(region, sku) of every row of the unmatched table as the browser shows them."""
    body = page[page.index('<section id="unmatched">') :]
    return {(row[0], row[1]) for row in _table_rows(body, "unmatched")[1:]}


# ---------------------------------------------------------------------------------------------
# one threshold and one set of figures (issue 21)


def _real_run(**kwargs: object) -> MatchResult:
    """A real match_catalog run on synthetic vectors with labels for every SKU."""
    from polyglot_catalog.matching.pipeline import match_catalog

    data, labels = _real_catalog()
    return match_catalog(data, k=5, labels=kwargs.pop("labels", labels), **kwargs)  # type: ignore[arg-type]


def _real_catalog() -> tuple[dict, dict]:
    from polyglot_catalog.matching.data import RegionTable

    rng = np.random.default_rng(5)
    n = 40
    base = rng.normal(size=(n, 24))
    words = {"DE": "Regal", "FR": "étagère", "US": "shelf"}
    data = {}
    for r, region in enumerate(REGIONS):
        keep = [i for i in range(n) if i % 7 != r]
        vec = base[keep] + 0.7 * rng.normal(size=(len(keep), 24))
        texts = [f"{FAMILIES[i % len(FAMILIES)][0]} {words[region]} {40 + i} cm" for i in keep]
        data[region] = RegionTable(region, [f"{region.lower()}{i}" for i in keep], texts, vec)
    labels = {(r, s): s[2:] for r, t in data.items() for s in t.skus}
    return data, labels


def _figure(page: str, label: str) -> str:
    """The value of the overview card with this label."""
    start = page.index(f'<div class="label">{label}</div>')
    return page[start:].split('<div class="value">', 1)[1].split("<", 1)[0]


@pytest.mark.parametrize("threshold", [None, 0.333])
def test_report_shows_one_threshold_and_one_set_of_figures(threshold: float | None) -> None:
    result = _real_run(threshold=threshold)
    page = render_html(result)
    run_threshold = result.summary["threshold"]
    overall = result.summary["metrics"]["overall"]

    # the sweep row marked as this run's is at the run's threshold, with the run's P/R/F1
    chosen = page[page.index('<tr class="chosen ') :].split("</tr>", 1)[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", chosen)
    assert cells == [f"{run_threshold:.4f}", *(f"{overall[k]:.3f}" for k in ("precision", "recall", "f1"))]
    # the PR-curve dot says the same
    dot = page[page.index('<circle class="marker"') :].split("</title>", 1)[0]
    assert (
        f"threshold {run_threshold:.3f}: precision {overall['precision']:.3f}, recall {overall['recall']:.3f}"
        in dot
    )
    # the headline cards say the same
    assert _figure(page, "Precision") == f"{overall['precision']:.3f}"
    assert _figure(page, "F1") == f"{overall['f1']:.3f}"
    assert _figure(page, "Threshold") == f"{run_threshold:.3f}"
    # the sweep's best F1 cannot be below the run's own F1
    sweep = result.summary["metrics"]["threshold_sweep"]
    assert max(r["f1"] for r in sweep) >= overall["f1"]
    # summary.json carries the run's row itself, at the threshold exactly as the summary states it
    (row,) = [r for r in sweep if r["threshold"] == run_threshold]
    assert (row["precision"], row["recall"], row["f1"]) == (
        overall["precision"],
        overall["recall"],
        overall["f1"],
    )
    assert result.summary["metrics"]["pr_curve"] == sweep


def test_sweep_decides_each_threshold_as_the_run_does() -> None:
    """At the run's threshold, the sweep recomputed from scratch equals the run's own decisions."""
    from polyglot_catalog.matching.evaluate import judges_for, threshold_sweep

    result = _real_run(threshold=0.3)
    data, labels = _real_catalog()
    judges = judges_for(data, labels, [("DE", "FR"), ("DE", "US"), ("FR", "US")])
    row = threshold_sweep(result.pairs, judges, grid=[0.3])[0]
    overall = result.summary["metrics"]["overall"]
    assert (row["precision"], row["recall"], row["f1"]) == (
        overall["precision"],
        overall["recall"],
        overall["f1"],
    )


def test_labels_of_another_catalog_score_nothing() -> None:
    """The demo labels on a user's own collection: no figures, and the report says why."""
    result = _real_run(labels={("DE", "DE-00001"): "276", ("FR", "FR-00009"): "276"})
    assert "metrics" not in result.summary
    assert "correct" not in result.pairs.columns
    page = render_html(result)
    assert "labels name none of the matched SKUs (2 labels); run not scored" in page
    assert "This run had no labels" in page and "Precision</div>" not in page


def test_pairs_only_some_labels_speak_about_are_not_counted_as_wrong() -> None:
    result = _real_run()
    full = result.summary["metrics"]["overall"]
    labels = {
        (r, s): s[2:]
        for r, s in pd.concat([result.unmatched[["region", "sku"]], result.groups[["region", "sku"]]])
        .astype(str)
        .itertuples(index=False)
        if r != "US"
    }
    partial = _real_run(labels=labels)
    assert partial.summary["metrics"]["by_pair"]["DE|US"]["fp"] == 0
    assert partial.summary["metrics"]["by_pair"]["DE|US"]["tp"] == 0
    assert partial.summary["metrics"]["by_pair"]["DE|FR"] == result.summary["metrics"]["by_pair"]["DE|FR"]
    assert full["tp"] > 0
    us = (partial.pairs["region_b"] == "US").to_numpy()
    assert partial.pairs.loc[us, "correct"].isna().all()


def test_sample_pairs_say_right_or_wrong_when_labels_exist() -> None:
    result = _real_run(threshold=0.2)
    page = render_html(result)
    assert "right per labels" in page and "wrong per labels" in page
    assert set(result.pairs["correct"].dropna().unique()) == {True, False}
    unlabelled = make_result(labelled=False)
    assert "per labels" not in render_html(unlabelled)


def test_tiny_run_gets_a_note_instead_of_a_flat_curve() -> None:
    result = make_result()
    flat = [{"threshold": t, "precision": 1.0, "recall": 1.0, "f1": 1.0} for t in (0.1, 0.5, THRESHOLD, 0.9)]
    result.summary["metrics"]["threshold_sweep"] = flat
    result.summary["metrics"]["pr_curve"] = flat
    page = render_html(result)
    assert 'aria-label="Precision-recall curve' not in page
    assert "Too few labelled pairs for a curve: every threshold from 0.100 to 0.900 gives" in page
    assert "precision 1.000 and recall 1.000" in page
    assert '<tr class="chosen ' in page


def test_report_from_before_the_run_row_marks_no_threshold_it_did_not_use() -> None:
    result = make_result()
    for key in ("threshold_sweep", "pr_curve"):
        result.summary["metrics"][key] = [
            r for r in result.summary["metrics"][key] if abs(r["threshold"] - THRESHOLD) > 1e-6
        ]
    page = render_html(result)
    assert 'class="marker"' not in page and '<tr class="chosen ' not in page
    assert "this run's threshold is not in the sweep" in page


def test_group_conflict_cards_say_what_clashed_and_hide_zero_conflicts() -> None:
    result = make_result()
    context = report_html.build_context(result, sample_size=30)
    conflict = next(
        c for c in context["samples"]["conflicts"] if c["sku_a"] == "D100200" or c["sku_b"] == "F909001"
    )
    assert conflict["conflict"].startswith("refused by the group rule")
    assert "F100200 vs F909001" in conflict["conflict"]
    result.pairs.loc[result.pairs["decision"] == "conflict", "conflict_numbers"] = 0.0
    page = render_html(result)
    assert "conflict_numbers <b>0.00</b>" not in page
    assert "Rejected by the group rule" in page and "conflicting evidence" not in page


def test_explain_never_starts_with_a_separator() -> None:
    result = make_result()
    result.pairs["explain"] = "; corroborated via a third region (0.91)"
    page = render_html(result)
    assert '<p class="explain">corroborated via a third region (0.91)</p>' in page
    assert '<p class="explain">;' not in page


def test_histogram_titles_sit_above_their_bars() -> None:
    hist = report_html._histogram(make_result().pairs, THRESHOLD)
    assert hist is not None
    for panel in hist["panels"]:
        assert panel["label_y"] < panel["y0"]
        assert all(bar["y"] >= panel["y0"] for bar in panel["bars"])
    assert hist["panels"][1]["label_y"] > hist["panels"][0]["base"]


def _with_matcher_outputs() -> MatchResult:
    """The matcher outputs of issue 21, added by hand: ambiguous ties, duplicates, reasons, provenance."""
    result = make_result()
    result.pairs["ambiguous"] = False
    first = result.matches["score"].idxmin()  # the borderline match, shown as a sample card
    result.pairs.loc[first, "ambiguous"] = True
    result.pairs.loc[first, "explain"] = "cosine 0.90; ambiguous: tie with D999999"
    result.unmatched["reason"] = ["twin taken by DE/D100200 (score 0.97)", "no candidate"][
        : len(result.unmatched)
    ]
    result.duplicates = pd.DataFrame(  # type: ignore[attr-defined]
        {
            "region": ["DE", "DE", "DE"],
            "listing": ["D1", "D1", "D1"],
            "sku": ["D1", "D2", "D3"],
            "text": ["Pflegehinweis: feucht abwischen <b>x</b>"] * 3,
        }
    )
    result.summary["counts_duplicates"] = 3
    result.summary["reproducibility"] = {
        "model": "multilingual-e5-small",
        "model_hash": "sha256:abc123",
        "versions": {"torch": "2.13.0", "polyglot_catalog": "0.1"},
        "matcher": {"k": 10, "threshold": None},
    }
    return result


def test_matcher_outputs_render_when_present() -> None:
    result = _with_matcher_outputs()
    page = render_html(result)
    assert "ambiguous: decided by a tie" in page
    ambiguous = _table_rows(page, "ambiguous")
    assert any("ambiguous: tie with D999999" in " ".join(row) for row in ambiguous)
    assert "Why unmatched" in page and "twin taken by DE/D100200 (score 0.97)" in page
    assert "Possible duplicate listings" in page and "3 SKUs in 1 sets" in page
    assert "<code>D1</code>, <code>D2</code>, <code>D3</code>" in page
    assert "feucht abwischen &lt;b&gt;x&lt;/b&gt;" in page
    assert '<code>model_hash</code></td><td class="text">sha256:abc123' in page
    assert '<code>versions.torch</code></td><td class="text">2.13.0' in page


def test_older_reports_without_the_new_outputs_render_without_those_sections() -> None:
    page = render_html(make_result())
    assert "Possible duplicate listings" not in page and ">Reproducibility</h2>" not in page
    assert "Why unmatched" not in page and "decided by a tie" not in page


def test_log_counts_groups_not_group_rows(
    tmp_path: Path, result: MatchResult, caplog: pytest.LogCaptureFixture
) -> None:
    n_groups = result.groups["group_id"].nunique()
    assert n_groups < len(result.groups)
    with caplog.at_level("INFO", logger="polyglot_catalog.reports.writer"):
        write_reports(tmp_path / "run", result)
    assert f"{len(result.pairs)} pairs, {n_groups} groups, {len(result.unmatched)} unmatched" in caplog.text


def test_report_links_its_data_files_for_download() -> None:
    page = render_html(make_result())
    links = [a for t, a in parse_tags(page) if t == "a" and "download" in a]
    assert [a["href"] for a in links] == [
        "pairs.parquet",
        "groups.parquet",
        "unmatched.parquet",
        "summary.json",
    ]
    with_duplicates = [
        a["href"] for t, a in parse_tags(render_html(_with_matcher_outputs())) if t == "a" and "download" in a
    ]
    assert "duplicates.parquet" in with_duplicates


def test_duplicate_listings_are_written_beside_the_pairs(tmp_path: Path) -> None:
    result = _with_matcher_outputs()
    folder = write_reports(tmp_path / "run", result)
    assert {p.name for p in folder.iterdir()} == REPORT_FILES | {"duplicates.parquet"}
    got = pd.read_parquet(folder / "duplicates.parquet")
    assert got.astype(str).equals(result.duplicates.reset_index(drop=True).astype(str))


def test_the_page_of_a_large_run_holds_less_than_a_second_copy_of_its_pairs(tmp_path: Path) -> None:
    """The match task renders the page with the pairs table in memory (12.5 M pairs at 300k x 3): the
    figures and samples must come from its columns, not from copies of its rows as strings (#26)."""
    import tracemalloc

    base = make_result(labelled=False)
    n, products = 300_000, 25_000  # ~12 candidates per product, as the matcher's k gives
    rng = np.random.default_rng(3)
    pairs = base.pairs.iloc[np.arange(n) % len(base.pairs)].reset_index(drop=True)
    for side in ("a", "b"):
        pairs[f"sku_{side}"] = pd.Categorical.from_codes(
            rng.integers(0, products, n), [f"{side.upper()}-{i:06d}" for i in range(products)]
        )
    for c in ("region_a", "region_b", "decision", "explain", "text_a", "text_b"):
        pairs[c] = pairs[c].astype("category")
    pairs["score"] = rng.random(n)
    pairs["ambiguous"] = rng.random(n) < 0.01
    big = MatchResult(pairs=pairs, groups=base.groups, unmatched=base.unmatched, summary=base.summary)
    table = int(pairs.memory_usage(deep=True).sum())

    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        page = render_html(big)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert f"{n:,}" in page  # the page does count every pair
    assert peak < table, f"rendering held {peak / 2**20:.1f} MB over a {table / 2**20:.1f} MB pairs table"


def test_distinct_products_on_codes_are_those_of_the_rows() -> None:
    """The page counts distinct products per region on the categoricals' codes (#26): the same
    (region, SKU) set as the distinct rows read as strings (a missing SKU once per region; no row
    without a region, as the count by region leaves them out)."""
    rng = np.random.default_rng(5)
    n = 5_000
    region = pd.Series(rng.choice(["DE", "FR", None], n, p=[0.6, 0.39, 0.01])).astype("category")
    sku = pd.Series(rng.choice([f"A-{i}" for i in range(700)] + [None], n)).astype("category")
    rows = pd.DataFrame({"region": region, "sku": sku}).drop_duplicates().astype(str).dropna(subset="region")
    got = report_html._distinct_products(region, sku)
    assert len(got) == len(rows)  # each product once
    assert set(got.fillna("-").itertuples(index=False, name=None)) == set(
        rows.fillna("-").itertuples(index=False, name=None)
    )
    assert set(got["region"]) == {"DE", "FR"} and got["sku"].isna().sum() == 2


@pytest.mark.parametrize("ascending", [True, False])
def test_nearest_pairs_are_those_a_stable_sort_of_every_score_gives(
    ascending: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The samples pick the pairs nearest the threshold a slice at a time (#26): the same rows as a
    stable sort of every masked score, ties in row order and missing scores last, in any slicing."""
    rng = np.random.default_rng(11)
    n = 2_000
    score = rng.integers(0, 40, n) / 40.0  # many ties
    score[rng.random(n) < 0.05] = np.nan
    mask = rng.random(n) < 0.7
    pairs = pd.DataFrame({"row": np.arange(n)})
    rows = np.flatnonzero(mask)
    for size in (0, 5, 60, 1_500):
        expected = pd.Series(score[rows]).sort_values(ascending=ascending, kind="stable").index[:size]
        for slice_rows in (7, 256, 1 << 20):
            monkeypatch.setattr(report_html, "_CODE_SLICE", slice_rows)
            got = report_html._nearest(pairs, score, mask, size, ascending=ascending)
            assert got["row"].tolist() == rows[expected].tolist()


def test_region_pair_counts_on_codes_are_those_of_a_groupby() -> None:
    rng = np.random.default_rng(12)
    n = 3_000
    table = pd.DataFrame(
        {
            "region_a": rng.choice(["DE", "FR"], n),
            "region_b": rng.choice(["FR", "JP", "US"], n),
            "decision": rng.choice(["match", "below_threshold", "conflict"], n),
        }
    )
    expected = report_html._region_pair_counts(table)  # strings: pandas' groupby
    assert report_html._region_pair_counts(table.astype("category")) == expected
    assert sum(n for n, _ in expected.values()) == n
    assert sum(m for _, m in expected.values()) == (table["decision"] == "match").sum()
