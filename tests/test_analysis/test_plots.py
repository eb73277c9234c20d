"""The plotting library on synthetic records: formats, sizes, overlays, downsampling."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from sharedattn.analysis.evaluation.synthetic import synthetic_record
from sharedattn.analysis.method.coverage import coverage_mask
from sharedattn.analysis.offline.similarity import similarity_matrix
from sharedattn.analysis.plots import downsample, heatmaps, render, similarity_plots, summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def record():
    return synthetic_record(num_layers=4, num_heads=6, num_tokens=1000, block_size=64, seed=0)


@pytest.fixture(scope="module")
def sim(record):
    return similarity_matrix(record)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---- downsampling -------------------------------------------------------------------------


@pytest.mark.parametrize("n,factor", [(128, 1), (128, 4), (1000, 8), (1000, 7), (13, 5)])
def test_sum_pool_preserves_total_mass(n, factor):
    x = torch.rand(2, n, n).tril()
    pooled = downsample.sum_pool(x, factor)
    assert pooled.shape == (2, -(-n // factor), -(-n // factor))
    np.testing.assert_allclose(pooled.sum(axis=(-2, -1)), x.sum(dim=(-2, -1)).numpy(), rtol=1e-5)


def test_row_pool_keeps_rows_summing_to_one(record):
    bm = record.block_mass[1, 2]  # 16 x 16, rows sum to 1
    shown = downsample.row_pool(bm, 3)  # 6 groups, the last one partial
    np.testing.assert_allclose(shown.sum(axis=1), 1.0, rtol=1e-5)
    counts = downsample.rows_per_group(bm.shape[0], 3)
    np.testing.assert_allclose((shown * counts[:, None]).sum(), bm.sum().item(), rtol=1e-5)


def test_any_pool_and_pool_factor():
    mask = np.zeros((10, 10), dtype=bool)
    mask[9, 0] = True
    pooled = downsample.any_pool(mask, 4)
    assert pooled.shape == (3, 3) and pooled[2, 0] and pooled.sum() == 1
    assert downsample.pool_factor(1000, 256) == 4
    assert downsample.pool_factor(128, 256) == 1


def test_sparse_ticks_are_few_and_round():
    ticks = downsample.sparse_ticks(131072, 6)
    assert 3 <= len(ticks) <= 7 and ticks[0] == 0
    assert downsample.format_tokens(131072) == "131.072K"
    assert downsample.format_tokens(20000) == "20K"


def test_outline_segments_trace_a_square():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    segs = downsample.outline_segments(mask)
    assert segs.shape == (4, 2, 2)  # merged runs: one segment per side
    lengths = np.abs(segs[:, 1] - segs[:, 0]).sum(axis=1)
    np.testing.assert_allclose(lengths, 2.0)


def test_log_range_ignores_zeros_and_floors_tiny_values():
    vmin, vmax = downsample.log_range(np.array([0.0, 1e-20, 0.5, 1.0]))
    assert vmax == 1.0 and vmin == pytest.approx(1e-5)


# ---- figures ------------------------------------------------------------------------------


def test_heatmap_png_with_coverage_overlay(record, tmp_path):
    overlay = heatmaps.coverage_overlay(record.block_mass[1, 2], 0.95)
    fig = heatmaps.heatmap_figure(record, 1, 2, overlay=overlay)
    title = fig.axes[0].get_title()
    assert "layer 1, head 2" in title and "1,000 tokens" in title and "density" in title
    path = render.save_figure(fig, tmp_path / "h.png")
    w, h = png_size(path)
    assert 500 < w < 1600 and 500 < h < 1600
    assert path.stat().st_size < 300_000


@pytest.mark.parametrize("suffix,magic", [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_head_grid_vector_formats(record, tmp_path, suffix, magic):
    fig = heatmaps.head_grid_figure(record, 0)
    path = render.save_figure(fig, tmp_path / f"grid{suffix}")
    assert path.read_bytes()[:len(magic)] == magic
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left


def test_grid_of_32_heads_at_1000_blocks_is_pooled(tmp_path):
    from sharedattn.analysis.evaluation.synthetic import large_synthetic_record

    rec = large_synthetic_record(1, 32, 1000, block_size=128, num_groups=4)
    fig = heatmaps.head_grid_figure(rec, 0)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (91, 91)  # 1000 blocks pooled 11x11: at most GRID_MAX_CELLS (96) a side
    assert "pooled 11x11" in fig._suptitle.get_text()
    path = render.save_figure(fig, tmp_path / "g.png")
    w, h = png_size(path)
    assert w < 2400 and h < 2400


def test_overlay_stats_match_coverage(record):
    bm = record.block_mass[2, 3]
    overlay = heatmaps.MaskOverlay(coverage_mask(bm, 0.9).numpy(), "cov")
    dens, mass = heatmaps.overlay_stats(bm, overlay)
    assert 0 < dens <= 1 and mass >= 0.9 - 1e-6
    full = heatmaps.MaskOverlay(np.tril(np.ones(bm.shape, dtype=bool)), "all")
    assert heatmaps.overlay_stats(bm, full) == pytest.approx((1.0, 1.0))


def test_shared_overlay_uses_the_clusters_pivot(record, sim):
    from sharedattn.analysis.offline.clustering import ClusterConfig, cluster_heads

    clusters = cluster_heads(sim, record.meta.model.num_heads, ClusterConfig())
    cluster = clusters.shared_clusters[0]
    pivot = min(cluster.heads)
    member = max(cluster.heads)
    ov = heatmaps.shared_overlay(record, clusters, *member, 0.95)
    assert f"L{pivot[0]}H{pivot[1]}" in ov.label
    np.testing.assert_array_equal(ov.mask, coverage_mask(record.block_mass[pivot], 0.95).numpy())


@pytest.mark.parametrize("layer,head,words", [(4, 0, "layers 0-3"), (-1, 0, "layers 0-3"), (0, 6, "heads 0-5")])
def test_out_of_range_names_the_valid_range(record, layer, head, words):
    with pytest.raises(render.PlotError, match=words):
        heatmaps.heatmap_figure(record, layer, head)


def test_empty_layer_is_reported(record):
    bm = record.block_mass.clone()
    bm[3] = 0.0
    rec = type(record)(record.meta, bm, record.vertical, record.slash)
    with pytest.raises(render.PlotError, match="no attention for layer 3"):
        heatmaps.head_grid_figure(rec, 3)


def test_bad_suffix_writes_nothing(record, tmp_path):
    fig = heatmaps.head_grid_figure(record, 0)
    with pytest.raises(render.PlotError, match=r"\.png, \.svg, \.pdf"):
        render.save_figure(fig, tmp_path / "grid.jpg")
    assert list(tmp_path.iterdir()) == []


def test_similarity_figures(record, sim, tmp_path):
    fp = record.meta.model
    fig = similarity_plots.similarity_figure(sim, fp.num_layers, fp.num_heads, title="t", metric="jaccard")
    assert len(fig.axes[0].collections) == 2  # layer boundaries, both directions
    assert png_size(render.save_figure(fig, tmp_path / "s.png"))[0] > 400
    fig = similarity_plots.clustermap_figure(sim, fp.num_layers, fp.num_heads, title="t", metric="jaccard")
    assert png_size(render.save_figure(fig, tmp_path / "c.png"))[0] > 600
    with pytest.raises(render.PlotError, match="expected"):
        similarity_plots.similarity_figure(sim[:5, :5], fp.num_layers, fp.num_heads, title="t", metric="js")


def test_across_reports_the_correlation(record, sim, tmp_path):
    fp = record.meta.model
    other = similarity_matrix(synthetic_record(4, 6, 1000, 64, seed=1))
    fig = similarity_plots.across_figure(sim, other, fp.num_layers, fp.num_heads, label_a="a",
                                         label_b="b", title="t", metric="jaccard")
    assert "Pearson r" in fig.axes[0].get_title()
    same = similarity_plots.pair_correlations(np.arange(5.0), np.arange(5.0))
    assert same == pytest.approx((1.0, 1.0))
    assert similarity_plots.pair_correlations(np.ones(4), np.arange(4.0)) == (0.0, 0.0)
    render.save_figure(fig, tmp_path / "a.png")


def test_summary_figure(record, sim, tmp_path):
    from sharedattn.analysis.offline.clustering import ClusterConfig, cluster_heads

    fp = record.meta.model
    dens = summary.head_densities(record, 0.95)
    assert dens.shape == (4, 6) and ((dens > 0) & (dens <= 1)).all()
    shared = summary.shared_head_matrix(cluster_heads(sim, fp.num_heads, ClusterConfig()), 4, 6)
    fig = summary.summary_figure(dens, title="t", gamma=0.95, shared=shared)
    render.save_figure(fig, tmp_path / "sum.pdf")
    fig = summary.summary_figure(dens, title="t", gamma=0.95)  # no clusters: a note instead
    assert png_size(render.save_figure(fig, tmp_path / "sum.png"))[0] > 500


def test_importing_analysis_loads_no_matplotlib():
    code = ("import sys, sharedattn.analysis, sharedattn.analysis.plots.heatmaps, "
            "sharedattn.analysis.plots.report_content, sharedattn_cli.heatmap, sharedattn_cli.report; "
            "print(any(m.startswith(('matplotlib', 'seaborn')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
