"""The one-to-one decisions from the score task's scores (#26): the match task's cut, accepted pairs
and ties, made beside the parts, and used by the match task only when they were made on its scores
with its settings."""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd
import pytest
from test_matching_feature_parts import _catalog, _feature_parts

from polyglot_catalog.matching.feature_parts import read_mapped
from polyglot_catalog.matching.inputs import MatchInputs
from polyglot_catalog.matching.part_decisions import MANIFEST, decide_parts
from polyglot_catalog.matching.part_scores import part_features, score_parts
from polyglot_catalog.matching.pipeline import match_catalog, match_tables
from polyglot_catalog.matching.settings import MatchSettings

COLUMNS = ["region_a", "sku_a", "region_b", "sku_b", "score", "decision", "ambiguous", "explain"]


@pytest.mark.parametrize(("threshold", "method"), [(None, "hungarian"), (0.6, "hungarian"), (None, "mutual")])
def test_decisions_from_parts_are_the_match_tasks(
    threshold: float | None, method: str, tmp_path: Path
) -> None:
    data = _catalog(n=120)
    one = match_catalog(data, k=5, sentences=None, threshold=threshold, method=method)
    parts = match_catalog(
        data, k=5, sentences=None, threshold=threshold, method=method, shards=3, shard_dir=tmp_path
    )
    assert parts.summary["decisions_from"] == "score task"
    pd.testing.assert_frame_equal(one.pairs[COLUMNS], parts.pairs[COLUMNS])
    pd.testing.assert_frame_equal(one.groups, parts.groups)
    pd.testing.assert_frame_equal(one.unmatched, parts.unmatched)
    assert one.summary["threshold"] == parts.summary["threshold"]
    for key in ("threshold_method", "match_share"):
        assert one.summary.get(key) == parts.summary.get(key)
    assert (one.pairs["decision"] == "match").sum() > 50
    if method == "hungarian" and threshold is None:  # identical listings: ties the rule must name
        assert one.pairs["ambiguous"].any()


def test_decisions_made_with_other_settings_or_scores_are_not_used(tmp_path: Path) -> None:
    data = _catalog(n=120)
    settings = MatchSettings(k=5)
    plan = _feature_parts(data, settings, 2, tmp_path)
    regions = sorted(data)
    score_parts(tmp_path, plan, regions, part_features(tmp_path, plan))
    decide_parts(tmp_path, plan, regions)  # label-free, hungarian

    def reduce(threshold: float | None):
        decide = (threshold, "hungarian")
        features = functools.partial(
            read_mapped, folder=tmp_path, shards=2, center=True, corroborate=True, decide=decide
        )
        run = MatchSettings(k=5, threshold=threshold)
        return match_tables(MatchInputs(dict(data), None), run, features=features)

    assert reduce(None).summary["decisions_from"] == "score task"
    strict = reduce(0.9)
    assert strict.summary["decisions_from"] == (
        "match task (the parts were decided with {'threshold': None, 'method': 'hungarian'}, "
        "this run asks {'threshold': 0.9, 'method': 'hungarian'})"
    )
    one = match_catalog(data, k=5, sentences=None, threshold=0.9)
    pd.testing.assert_frame_equal(one.pairs[COLUMNS], strict.pairs[COLUMNS])

    score_parts(tmp_path, plan, regions, part_features(tmp_path, plan), corroborate=False)
    assert reduce(None).summary["decisions_from"].startswith("match task (the scores are the match task")
    decide_parts(tmp_path, plan, regions)  # on the new scores, but a run asking for corroboration
    assert reduce(None).summary["scores_from"].startswith("match task (the parts were scored with other")

    (tmp_path / "scores.json").unlink()
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ValueError, match=r"no scores\.json in .*: the score task decides after scoring"):
        decide_parts(tmp_path, plan, regions)
