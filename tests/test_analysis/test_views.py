"""The heatmap command's views, built in the library from records."""
import pytest

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.offline.choices import Metric
from sharedattn.analysis.plots.choices import MaskKind, View
from sharedattn.analysis.plots.render import PlotError
from sharedattn.analysis.plots.views import default_name, make_figure


@pytest.fixture(scope="module")
def records():
    return [synthetic_record(num_layers=3, num_heads=4, num_tokens=640, block_size=64, seed=s) for s in (0, 1)]


def test_default_names_say_the_view(records):
    rec = records[0]
    assert default_name(rec, View.HEATMAP, 2, None, MaskKind.COVERAGE, Metric.JACCARD).endswith("-L2-all-coverage.png")
    assert default_name(rec, View.HEATMAP, 1, 3, None, Metric.JACCARD).endswith("-L1-H3.png")
    assert default_name(rec, View.SUMMARY, None, None, None, Metric.JS).endswith("-summary.png")
    assert default_name(rec, View.CLUSTERMAP, None, None, None, Metric.JS).endswith("-clustermap-js.png")


@pytest.mark.parametrize("view", [View.SIMILARITY, View.ACROSS, View.SUMMARY])
def test_every_view_draws(records, view):
    fig = make_figure(records, view, layer=None, head=None, mask=None, gamma=0.9, metric=Metric.JACCARD, lookup=None)
    assert fig is not None


def test_heatmap_with_masks_and_notes(records):
    heard = []
    fig = make_figure(records, View.HEATMAP, layer=1, head=2, mask=MaskKind.COVERAGE, gamma=0.9,
                      metric=Metric.JACCARD, lookup=None, note=heard.append)
    assert fig is not None and heard == []
    with pytest.raises(PlotError, match="layer"):
        make_figure(records, View.HEATMAP, layer=7, head=None, mask=None, gamma=0.9, metric=Metric.JACCARD,
                    lookup=None)
