"""Lookup files: round trip, validation errors that name the field, model checks."""
import json

import pytest

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.files.fingerprint import FormatError
from sharedattn.analysis.offline.clustering import ClusterConfig, cluster_heads
from sharedattn.analysis.offline.lookup import build_lookup, check_lookup_model, load_lookup, save_lookup
from sharedattn.analysis.offline.similarity import SimilarityConfig, mean_similarity, similarity_matrices


@pytest.fixture()
def lookup_file(tmp_path):
    recs = [synthetic_record(num_layers=2, num_heads=4, seed=s) for s in (1, 2)]
    sim = mean_similarity(similarity_matrices(recs, SimilarityConfig()))
    config = ClusterConfig(n_clusters=4, min_similarity=0.0)
    lookup = build_lookup(recs, cluster_heads(sim, 4, config), gamma=0.95, metric="jaccard",
                          options=config.to_json())
    return save_lookup(lookup, tmp_path / "sub" / "lookup.json"), lookup, recs


def test_round_trip(lookup_file):
    path, lookup, recs = lookup_file
    loaded = load_lookup(path)
    assert loaded == lookup
    assert loaded.calibration.prompts[1].sha256 == recs[1].meta.prompt.sha256
    assert loaded.cluster_of(1, 2).heads == ((0, 2), (1, 2))
    assert loaded.cluster_of(7, 7) is None
    assert len(loaded.shared_clusters) == 4
    check_lookup_model(loaded, recs[0].meta.model)
    assert not list(path.parent.glob(".*.tmp"))


def _edit(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change, field", [
    (lambda d: d.update(kind="other"), "kind"),
    (lambda d: d.update(schema_version=9), "schema_version"),
    (lambda d: d["model"].pop("num_heads"), "model.num_heads"),
    (lambda d: d["calibration"].update(gamma=2), "calibration.gamma"),
    (lambda d: d["calibration"]["prompts"][0].update(sha256=5), r"calibration.prompts\[0\].sha256"),
    (lambda d: d["clusters"][0].update(size=7), r"clusters\[0\].size"),
    (lambda d: d["clusters"][0]["heads"].append([9, 0]), r"clusters\[0\].heads\[2\]"),
    (lambda d: d["clusters"][1].update(heads=d["clusters"][0]["heads"], layers=d["clusters"][0]["layers"]),
     r"clusters\[1\].heads"),
    (lambda d: d["clusters"][0].update(layers=[5]), r"clusters\[0\].layers"),
    (lambda d: d["clusters"][0].update(shared="yes"), r"clusters\[0\].shared"),
    (lambda d: d["clusters"][0].update(mean_similarity=3), r"clusters\[0\].mean_similarity"),
    (lambda d: d["clusters"][1].update(id=d["clusters"][0]["id"]), r"clusters\[1\].id"),
])
def test_validation_names_the_field(lookup_file, change, field):
    path, _, _ = lookup_file
    _edit(path, change)
    with pytest.raises(FormatError, match=field):
        load_lookup(path)


def test_not_json_and_missing(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(FormatError, match="not valid JSON"):
        load_lookup(bad)
    with pytest.raises(FormatError, match="no such lookup"):
        load_lookup(tmp_path / "missing.json")


def test_lookup_for_another_model_is_rejected(lookup_file):
    path, lookup, _ = lookup_file
    other = synthetic_record(num_layers=3, num_heads=4).meta.model
    with pytest.raises(FormatError, match="num_layers"):
        check_lookup_model(load_lookup(path), other)
    renamed = synthetic_record(num_layers=2, num_heads=4, model_id="other").meta.model
    with pytest.raises(FormatError, match="model_id"):
        check_lookup_model(lookup, renamed)
    check_lookup_model(lookup, renamed, check_id=False)
