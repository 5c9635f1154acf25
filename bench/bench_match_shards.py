"""Full match as mapped search shards vs one task: 3 regions x N products (bench/_synth.py), side by side.

Every task runs in a fresh subprocess, so each peak RSS (VmHWM) is that task's own:

- **one task**: ``match_catalog`` on the whole catalog (exact path), as ``match_regions`` runs it
  without shards;
- **prepare**: what the ``plan_search_shards`` task does besides planning: each region's search
  file (its distinct texts' vectors, the exact mean) and rows file with its statistics
  (:mod:`polyglot_catalog.matching.feature_parts`), streamed from the stored rows in pages;
- **map**: each search shard as its own process, doing what one Airflow ``search_shard`` task does:
  read its range of texts and the other region in chunks from the search files, search, write its
  Parquet part; then each shard's ``cut_search_parts`` task; then its ``feature_shard`` task (its
  pairs' features from the rows and search files); then the ``score_parts`` task (the scorers
  fitted on the parts, every pair scored, the one-to-one rule decided). At parallelism 1 (one after
  another) and 2 (two at a time, into another folder);
- **reduce**: what ``match_regions`` does after the mapped tasks: the tables without vectors (as it
  reads them from the store), the feature parts with their scores and decisions put together, groups, then
  the report (the one task writes it too). With ``--state``, the match state committed as
  ``run_match`` commits it (the report written inside the commit) into a copy of an embedded store
  of the catalog's points (4-d vectors: the state never reads them), written once beforehand.

Printed: whether both runs accept the same pairs and form the same groups, the peak RSS of each kind
of task, wall time at parallelism 1 and 2 (map phases + reduce) against the one task, and the
reduce's share of it. Data: generated once, kept per region in ``.npz`` files the tasks load.

    python bench/bench_match_shards.py [--n 50000] [--shards 4] [--no-append]

The mapped side runs first and the one task last, so the runs a 300k catalog needs (about two
hours here) leave every finished phase's figures behind: ``--work DIR`` keeps the data, parts and
figures there, and a run given the same ``--work`` again skips each phase whose figures exist.

``--mapped-only``: the mapped side alone, at parallelism 1 (plan, every search, cut and feature
task, the match task), no one-task run: each kind of task's peak memory at a catalog size where
the side by side does not fit the session (the same pairs are checked at smaller sizes).

``--maps-only M``: generate and prepare, then run only the first M map tasks (no one-task run, no
reduce): a map task's peak memory and time at a catalog size where the whole comparison does not
fit the session, e.g. ``--n 300000 --shards 12 --maps-only 2`` against ``--n 100000 --shards 4``
(the same range of 25,000 texts per task).
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

from _common import publish
from bench_match_scale import _hwm_mb


def _write_catalog(n: int, folder: Path) -> None:
    import _synth

    vecs = _synth.synth_vectors(n, seed=5)
    for r in _synth.LANGS:
        np.savez(
            folder / f"{r}.npz",
            skus=np.array([f"{r}-{i:07d}" for i in range(n)]),
            texts=np.array(_synth.synth_texts(n, r, seed=5), dtype=object),
            vectors=vecs[r],
        )


def _load(folder: Path, regions: list[str], vectors: bool = True) -> dict:
    """The tables; ``vectors=False`` as the match task reads them after feature tasks (none loaded)."""
    from polyglot_catalog.matching.data import RegionTable

    out = {}
    for r in regions:
        z = np.load(folder / f"{r}.npz", allow_pickle=True)
        skus = z["skus"].tolist()
        vec = z["vectors"] if vectors else np.zeros((len(skus), 0), dtype=np.float32)
        out[r] = RegionTable(r, skus, z["texts"].tolist(), vec)
    return out


def _accepted(result) -> list[tuple]:
    m = result.matches
    cols = ("region_a", "sku_a", "region_b", "sku_b")
    return sorted(zip(*(m[c].astype(str) for c in cols), strict=True))


def _groups(result) -> list[frozenset]:
    g = result.groups
    return sorted(
        (frozenset(zip(x["region"], x["sku"], strict=True)) for _, x in g.groupby("group_id")), key=sorted
    )


def _child(args: argparse.Namespace) -> None:
    import functools

    from polyglot_catalog.matching.feature_parts import (
        folder_plan,
        map_features,
        read_mapped,
        write_region_rows,
        write_shard_cuts,
    )
    from polyglot_catalog.matching.inputs import MatchInputs
    from polyglot_catalog.matching.pipeline import match_catalog, match_tables
    from polyglot_catalog.matching.region_search import write_region_search
    from polyglot_catalog.matching.result import MatchResult
    from polyglot_catalog.matching.settings import MatchSettings
    from polyglot_catalog.matching.shards import CandidateShard, map_shard

    data_dir, out = Path(args.data), Path(args.out)
    t0 = time.perf_counter()
    result, extra = None, {}
    if args.child == "prepare":
        texts = {}
        for r in ("DE", "FR", "US"):  # pages of 1,024 raw rows, as the store's scroll gives them
            z = np.load(data_dir / f"{r}.npz", allow_pickle=True)
            skus, txt, vec = z["skus"], z["texts"], z["vectors"]
            del z
            pages = (
                (skus[i : i + 1024].tolist(), txt[i : i + 1024].tolist(), vec[i : i + 1024])
                for i in range(0, len(skus), 1024)
            )
            texts[r] = write_region_search(r, pages, args.parts).texts
            rows = (
                (skus[i : i + 1024].tolist(), txt[i : i + 1024].tolist(), {})
                for i in range(0, len(skus), 1024)
            )
            write_region_rows(r, rows, args.parts)
            del skus, txt, vec
        (out.with_suffix(".texts")).write_text(json.dumps(texts))
    elif args.child in ("map", "cuts", "features"):
        q, o, start, stop = args.shard.split(":")
        shard, settings = CandidateShard(q, o, int(start), int(stop)), MatchSettings(k=10)
        if args.child == "map":
            map_shard(args.parts, shard, settings, shards=args.shards)
        else:  # as the operators: the plan from the shard count and the search files
            plan = folder_plan(args.parts, ["DE", "FR", "US"], args.shards)
            if args.child == "cuts":
                write_shard_cuts(args.parts, shard, plan, settings.k)
            else:
                map_features(args.parts, shard, settings, ["DE", "FR", "US"], plan)
    elif args.child == "score":  # as score_parts: the scorers fitted on the parts, every pair scored, decided
        from polyglot_catalog.matching.part_decisions import decide_parts
        from polyglot_catalog.matching.part_scores import part_features, score_parts

        plan = folder_plan(args.parts, ["DE", "FR", "US"], args.shards)
        scored = score_parts(args.parts, plan, ["DE", "FR", "US"], part_features(args.parts, plan))
        t1 = time.perf_counter()
        decided = decide_parts(args.parts, plan, ["DE", "FR", "US"])
        stages = {**scored.seconds, "decide": time.perf_counter() - t1}
        extra = {"pairs": scored.pairs, "stages": stages, "accepted": decided["accepted"]}
    elif args.child == "store":
        _write_store(data_dir, data_dir.parent / "store")
    elif args.child == "reduce":  # as match_regions: the rows without vectors, the parts put together
        data = _load(data_dir, ["DE", "FR", "US"], vectors=False)
        features = functools.partial(
            read_mapped,
            folder=args.parts,
            shards=args.shards,
            center=True,
            corroborate=True,
            decide=(None, "hungarian"),
            hold=not args.hold_all,  # as match_catalog without labels: only the pairs that can matter
        )
        result = match_tables(MatchInputs(data, None), MatchSettings(k=10), features=features)
    else:
        result = match_catalog(_load(data_dir, ["DE", "FR", "US"]), k=10, sentences=None)
    figures = {"seconds": time.perf_counter() - t0, "peak_mb": _hwm_mb(), **extra}
    if result is not None:  # the match task then writes the report (pairs.parquet, the page): in its peak
        from polyglot_catalog.reports import write_reports

        figures["match_peak_mb"] = figures["peak_mb"]
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:

            def report(r: MatchResult) -> None:
                t1 = time.perf_counter()
                write_reports(Path(args.report_dir or tmp) / "report", r)
                figures["report_seconds"] = time.perf_counter() - t1
                if args.state:
                    r.keep_accepted_pairs()  # as run_match: the commit's apply runs without them

            if args.state:  # as run_match: the state committed, the report written inside the commit
                figures.update(_commit_state(data_dir.parent / "store", out.parent, result, report))
                figures["state_seconds"] -= figures["report_seconds"]
            else:
                report(result)
        figures["seconds"], figures["peak_mb"] = time.perf_counter() - t0, _hwm_mb()
        figures["timings"] = result.summary["timings"]
        figures["accepted"] = len(result.matches)
        figures["scores_from"] = result.summary.get("scores_from", "match task")
        figures["decisions_from"] = result.summary.get("decisions_from", "match task")
        (out.with_suffix(".pairs")).write_bytes(pickle.dumps((_accepted(result), _groups(result))))
    out.write_text(json.dumps(figures))


def _write_store(data_dir: Path, folder: Path) -> None:
    """The catalog's points in the embedded store, as embed leaves them (region, SKU, text; 4-d
    vectors: the state never reads them), for the match task's state commit."""
    from polyglot_catalog.ids import point_id
    from polyglot_catalog.store import CatalogStore, open_client

    shutil.rmtree(folder, ignore_errors=True)
    client = open_client(path=str(folder))
    store = CatalogStore(client, "bench", "v")
    store.ensure_collection(4)
    for r in ("DE", "FR", "US"):
        z = np.load(data_dir / f"{r}.npz", allow_pickle=True)
        skus, texts = z["skus"].tolist(), z["texts"].tolist()
        for i in range(0, len(skus), 20_000):
            batch = skus[i : i + 20_000]
            store.upsert(
                [point_id(r, s) for s in batch],
                np.tile(np.eye(4, dtype=np.float32)[:1], (len(batch), 1)),
                [
                    {"region": r, "sku": s, "text": t, "status": "active"}
                    for s, t in zip(batch, texts[i:], strict=False)
                ],
            )
    client.close()


def _anon_mb() -> float:
    """This process's anonymous resident memory (heap, not file pages an embedded store maps)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _commit_state(folder: Path, work: Path, result: object, report: object) -> dict:
    """``commit_match_state`` of ``result`` into a copy of the store at ``folder`` (a first run:
    every matched point written), calling ``report`` where run_match writes the report: its seconds
    and points written."""
    from polyglot_catalog.matching.state import commit_match_state
    from polyglot_catalog.store import CatalogStore, open_client

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        copy = Path(tmp) / "store"
        shutil.copytree(folder, copy)
        client = open_client(path=str(copy))
        anon, done = [_anon_mb()], threading.Event()

        def sample() -> None:  # the embedded store's file pages count in RSS; this tells them apart
            while not done.wait(0.2):
                anon.append(_anon_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        commit_match_state(CatalogStore(client, "bench", "v"), result, "bench-run", before_apply=report)
        seconds = time.perf_counter() - t0
        done.set()
        sampler.join()
        client.close()
    return {
        "state_seconds": seconds,
        "points_written": result.summary["match_state"]["points_written"],
        "state_peak_anon_mb": max(anon),
    }


def _peaks(task: dict) -> str:
    """A match task's peak RSS, with the match's own before the report where both were measured."""
    if "match_peak_mb" not in task:
        return f"{task['peak_mb']:.0f}"
    return f"{task['peak_mb']:.0f} (match {task['match_peak_mb']:.0f})"


def _stages(task: dict) -> dict:
    """The match's stage seconds and, where measured, the report's."""
    extra = {"report": round(task["report_seconds"], 3)} if "report_seconds" in task else {}
    if "state_seconds" in task:
        extra["state"] = round(task["state_seconds"], 3)
    return {**task["timings"], **extra}


def _rounded(seconds: dict) -> dict:
    return {k: round(v, 1) for k, v in seconds.items()}


def _done(work: Path, *tags: str) -> bool:
    """Whether a kept ``--work`` folder already holds these tasks' figures (the phase is skipped)."""
    return all((work / t).exists() for t in tags)


def _run(kind: str, work: Path, args: argparse.Namespace, tag: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--child", kind, "--data", str(work / "data"), "--out", str(work / tag)]
    cmd += ["--n", str(args.n), "--shards", str(args.shards), *extra]
    return subprocess.Popen(cmd)


def _maps(
    work: Path, args: argparse.Namespace, plan: list, parts: Path, parallel: int, kind: str = "map"
) -> tuple[float, list]:
    t0 = time.perf_counter()
    running: list[tuple[subprocess.Popen, str]] = []
    tags = [f"{kind}-{parallel}-{i}.json" for i in range(len(plan))]
    if _done(work, *tags, f"{kind}-{parallel}.wall"):
        wall = float((work / f"{kind}-{parallel}.wall").read_text())
        return wall, [json.loads((work / t).read_text()) for t in tags]
    for i, s in enumerate(plan):
        tag = tags[i]
        spec = f"{s.query}:{s.other}:{s.start}:{s.stop}"
        running.append((_run(kind, work, args, tag, "--shard", spec, "--parts", str(parts)), tag))
        while len([p for p, _ in running if p.poll() is None]) >= parallel:
            time.sleep(0.05)
    for p, _ in running:
        if p.wait() != 0:
            raise SystemExit(f"a {kind} task failed")
    wall = time.perf_counter() - t0
    (work / f"{kind}-{parallel}.wall").write_text(str(wall))
    return wall, [json.loads((work / t).read_text()) for t in tags]


def _map_phases(
    work: Path, args: argparse.Namespace, plan: list, parts: Path, parallel: int
) -> tuple[float, dict]:
    """Search, cuts and feature tasks (each mapped over the shards), then the score task, as the DAG
    runs them: wall seconds, each kind's figures."""
    search_s, search = _maps(work, args, plan, parts, parallel)
    cuts_s, cuts = _maps(work, args, plan, parts, parallel, "cuts")
    feat_s, feats = _maps(work, args, plan, parts, parallel, "features")
    tag = f"score-{parallel}.json"
    if not _done(work, tag) and _run("score", work, args, tag, "--parts", str(parts)).wait() != 0:
        raise SystemExit("the score task failed")
    score = json.loads((work / tag).read_text())
    maps = {"search": search, "cuts": cuts, "features": feats, "score": [score]}
    return search_s + cuts_s + feat_s + score["seconds"], maps


def _reduce(work: Path, args: argparse.Namespace) -> dict:
    """The match task on the first map phase's parts (skipped when its figures are kept)."""
    tag = "reduce.json"
    if args.state and not _done(work, "store") and _run("store", work, args, "store.json").wait() != 0:
        raise SystemExit("writing the store failed")
    state = ["--state"] if args.state else []
    if (
        not _done(work, tag)
        and _run("reduce", work, args, tag, "--parts", str(work / "parts1"), *state).wait()
    ):
        raise SystemExit("the reduce failed")
    return json.loads((work / "reduce.json").read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--maps-only", type=int, default=None, help="run only the first M map tasks")
    parser.add_argument("--mapped-only", action="store_true", help="the mapped side alone, parallelism 1")
    parser.add_argument("--work", type=Path, help="keep data, parts and figures here; resume from them")
    parser.add_argument(
        "--child",
        choices=["one", "prepare", "map", "cuts", "features", "score", "reduce", "store"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--state", action="store_true", help="the match task also commits the match state")
    parser.add_argument(
        "--hold-all",
        action="store_true",
        help="the match task holds every candidate pair (as before held_pairs)",
    )
    parser.add_argument("--report-dir", help="keep the match task's report here (a child's own run)")
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--parts", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return
    from polyglot_catalog.matching.shards import plan_shards

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        (work / "data").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if not _done(work, "data/US.npz"):
            _write_catalog(args.n, work / "data")
        gen_s = time.perf_counter() - t0
        if not _done(work, "prepare.json", "parts2"):
            shutil.rmtree(work / "parts2", ignore_errors=True)
            if _run("prepare", work, args, "prepare.json", "--parts", str(work / "parts1")).wait() != 0:
                raise SystemExit("the prepare task failed")
            shutil.copytree(work / "parts1", work / "parts2")  # the second map phase's own folder
        prep = json.loads((work / "prepare.json").read_text())
        texts = json.loads((work / "prepare.texts").read_text())
        plan = plan_shards(texts, args.shards)
        if args.mapped_only:
            map1_s, phase1 = _map_phases(work, args, plan, work / "parts1", 1)
            red = _reduce(work, args)
            _mapped_only_report(args, argv, plan, prep, phase1, map1_s, red, gen_s)
            return
        if args.maps_only:
            map1_s, maps1 = _maps(work, args, plan[: args.maps_only], work / "parts1", 1)
            _maps_only_report(args, argv, plan, prep, maps1, gen_s)
            return
        # mapped side first, the one task last: each finished phase's figures stay in ``--work``
        map1_s, phase1 = _map_phases(work, args, plan, work / "parts1", 1)
        map2_s, phase2 = _map_phases(work, args, plan, work / "parts2", 2)
        red = _reduce(work, args)
        if not _done(work, "one.json") and _run("one", work, args, "one.json").wait() != 0:
            raise SystemExit("the one-task run failed")
        one = json.loads((work / "one.json").read_text())
        pairs_one, groups_one = pickle.loads((work / "one.pairs").read_bytes())
        pairs_red, groups_red = pickle.loads((work / "reduce.pairs").read_bytes())
    same_pairs, same_groups = pairs_one == pairs_red, groups_one == groups_red
    wall1, wall2 = prep["seconds"] + map1_s + red["seconds"], prep["seconds"] + map2_s + red["seconds"]
    maps1, cuts = phase1["search"], phase1["cuts"]
    cuts_peak, per_cut = max(m["peak_mb"] for m in cuts), [m["seconds"] for m in cuts]
    map_peak = max(m["peak_mb"] for m in maps1)
    feat_peak = max(m["peak_mb"] for m in phase1["features"])
    per_map = [m["seconds"] for m in maps1]
    per_feat = [m["seconds"] for m in phase1["features"]]
    score = phase1["score"][0]
    body = "\n".join(
        [
            f"3 regions x {args.n:,} products (bench/_synth.py), k=10, exact search, no sentence vectors; "
            f"{args.shards} shards per region pair = {len(plan)} search tasks and {len(plan)} feature tasks. "
            "Each task a fresh process (wall times include its start, ~1 s of imports; task seconds do not).",
            "",
            "| run | wall s | peak RSS MB (per task) | stage seconds |",
            "|---|---|---|---|",
            f"| one task (match, then the report) | {one['seconds']:.1f} | {_peaks(one)} | "
            f"`{json.dumps(_stages(one))}` |",
            f"| prepare (search and rows files) | {prep['seconds']:.1f} | {prep['peak_mb']:.0f} | |",
            f"| search tasks | | {map_peak:.0f} (max of {len(maps1)}) | "
            f"per task {min(per_map):.1f}-{max(per_map):.1f} s, sum {sum(per_map):.1f} s |",
            f"| cuts tasks | | {cuts_peak:.0f} (max of {len(cuts)}) | "
            f"per task {min(per_cut):.1f}-{max(per_cut):.1f} s, sum {sum(per_cut):.1f} s |",
            f"| feature tasks | | {feat_peak:.0f} (max of {len(per_feat)}) | "
            f"per task {min(per_feat):.1f}-{max(per_feat):.1f} s, sum {sum(per_feat):.1f} s |",
            f"| score task (one, over every part: scores, then decisions) | {score['seconds']:.1f} | "
            f"{score['peak_mb']:.0f} | `{json.dumps(_rounded(score['stages']))}` |",
            f"| all map phases and the score task, parallelism 1 | {map1_s:.1f} | | |",
            f"| all map phases and the score task, parallelism 2 | {map2_s:.1f} | "
            f"{max(m['peak_mb'] for phase in phase2.values() for m in phase):.0f} | |",
            f"| reduce (parts and scores put together, decisions, groups, then the report"
            f"{' inside the state commit' if 'state_seconds' in red else ''}; no vectors) | "
            f"{red['seconds']:.1f} | {_peaks(red)} | `{json.dumps(_stages(red))}` |",
            "",
            f"Same accepted pairs: **{same_pairs}** ({len(pairs_one):,} vs {len(pairs_red):,}); same groups: "
            f"**{same_groups}**.",
            f"Wall time, prepare + maps + reduce / one task: parallelism 1 **{wall1 / one['seconds']:.2f}**, "
            f"parallelism 2 **{wall2 / one['seconds']:.2f}**; the reduce is {red['seconds'] / wall1:.0%} "
            f"(p=1) / {red['seconds'] / wall2:.0%} (p=2) of the sharded wall time.",
            f"Per-task peak RSS: search {map_peak:.0f} MB, features {feat_peak:.0f} MB, cuts "
            f"{cuts_peak:.0f} MB, score {score['peak_mb']:.0f} MB, "
            f"reduce {red['peak_mb']:.0f} MB, "
            f"one task {one['peak_mb']:.0f} MB. The reduce's scores came from the "
            f"{red.get('scores_from', 'match task')}, its decisions from the "
            f"{red.get('decisions_from', 'match task')}.",
        ]
    )
    publish(
        "Full match as mapped search and feature shards vs one task",
        Path(__file__).name,
        argv if argv is not None else sys.argv[1:],
        body,
        not args.no_append,
    )


def _mapped_only_report(
    args: argparse.Namespace,
    argv: list[str] | None,
    plan: list,
    prep: dict,
    phase: dict,
    map_s: float,
    red: dict,
    gen_s: float,
) -> None:
    def kind(rows: list) -> str:
        secs = [m["seconds"] for m in rows]
        peak = max(m["peak_mb"] for m in rows)
        return f"{peak:.0f} (max of {len(rows)}) | {min(secs):.1f}-{max(secs):.1f} s each"

    body = "\n".join(
        [
            f"3 regions x {args.n:,} products (bench/_synth.py, generated in {gen_s:.0f} s), k=10, "
            f"no sentence vectors; {args.shards} shards per region pair: {len(plan)} search and "
            f"{len(plan)} feature tasks, one at a time, each a fresh process; no one-task run.",
            "",
            "| task | peak RSS MB | seconds |",
            "|---|---|---|",
            f"| plan (search, rows, statistics files) | {prep['peak_mb']:.0f} | {prep['seconds']:.1f} |",
            f"| search tasks | {kind(phase['search'])} |",
            f"| cuts tasks | {kind(phase['cuts'])} |",
            f"| feature tasks | {kind(phase['features'])} |",
            f"| score task | {kind(phase['score'])} |",
            f"| match task (no vectors; then the report) | {_peaks(red)} | "
            f"{red['seconds']:.1f} `{json.dumps(_stages(red))}` |",
            "",
            f"All map tasks one after another: {map_s:.0f} s. Accepted pairs: {red.get('accepted', '?')}.",
        ]
    )
    publish(
        "Mapped full match alone: memory per task at a catalog size",
        Path(__file__).name,
        argv if argv is not None else sys.argv[1:],
        body,
        not args.no_append,
    )


def _maps_only_report(
    args: argparse.Namespace, argv: list[str] | None, plan: list, prep: dict, maps: list, gen_s: float
) -> None:
    ranges = sorted({s.stop - s.start for s in plan})
    body = "\n".join(
        [
            f"3 regions x {args.n:,} products (bench/_synth.py, generated in {gen_s:.0f} s), k=10; "
            f"{args.shards} shards per region pair = {len(plan)} map tasks of {ranges[0]:,}-{ranges[-1]:,} "
            f"texts each; the first {len(maps)} run, each a fresh process (no one-task run, no reduce).",
            "",
            "| task | seconds | peak RSS MB |",
            "|---|---|---|",
            f"| prepare (3 regions' search files) | {prep['seconds']:.1f} | {prep['peak_mb']:.0f} |",
            *(
                f"| map {plan[i].name} | {m['seconds']:.1f} | {m['peak_mb']:.0f} |"
                for i, m in enumerate(maps)
            ),
        ]
    )
    publish(
        "Search shard tasks: memory and time per task at a given range size",
        Path(__file__).name,
        argv if argv is not None else sys.argv[1:],
        body,
        not args.no_append,
    )


if __name__ == "__main__":
    main()
