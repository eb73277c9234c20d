"""The prefill harness: repeats against dense, fidelity, layer errors, and the report document."""
import statistics

import pytest

from sharedattn.analysis.evaluation.compare import layer_error_stats
from sharedattn.analysis.evaluation.prefill_bench import machine_name, prefill_against_dense, report_document, spread
from sharedattn.analysis.files.prompts import resolve_prompt
from sharedattn.analysis.method.method_config import MethodName, make_config


def test_spread_and_layer_error_stats():
    assert spread([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert layer_error_stats([0.1, 0.4, 0.2]) == (pytest.approx(0.7 / 3), 0.4, 1)
    assert layer_error_stats(None) == (None, None, None) == layer_error_stats([])


@pytest.fixture(scope="module")
def passkey(tiny_model):
    return resolve_prompt("passkey:depth=0.5", tiny_model.tokenizer, tokens=512, max_tokens=8192)


def test_repeats_fidelity_and_document(tiny_model, passkey):
    # a-shape keeps a fixed sink and window: below density 1 even on a random model's diffuse attention
    config = make_config(MethodName.A_SHAPE, block_size=64, dense_below=0, sink_tokens=64, local_tokens=128)
    result = prefill_against_dense(tiny_model, passkey.input_ids, MethodName.A_SHAPE, config,
                                   repeats=2, warmup=1, max_new_tokens=2)
    assert len(result.dense_runs) == len(result.method_runs) == 2
    assert result.dense.method is MethodName.DENSE and result.dense.config.block_size == 64
    assert len(result.layer_errors) == tiny_model.fingerprint.num_layers
    doc = report_document(result, command="sharedattn prefill", machine=machine_name(tiny_model),
                          loaded=tiny_model, prompt=passkey, config=config, lookup_note=None, bench=True)
    s, timing = doc["summary"], doc["timing"]
    assert timing["a-shape"]["ttft_s"]["n"] == 2
    assert s["ttft_s"] == statistics.median(r.seconds for r in result.method_runs)
    assert s["speedup_ttft"] == pytest.approx(s["ttft_dense_s"] / s["ttft_s"])
    assert s["worst_layer_error"] == max(result.layer_errors) > 0
    assert s["mean_layer_error"] == pytest.approx(sum(result.layer_errors) / len(result.layer_errors))
    assert 0 < s["density"] < 1 and doc["prompt"]["expected_answer"] == passkey.answer
    assert doc["fidelity"]["kl_last"] == s["kl_last"] >= 0
    assert set(doc["generation"]) == {"dense", "a-shape", "correct_dense", "correct_a-shape"}
    assert machine_name(tiny_model).startswith("CPU (")


def test_dense_against_itself_without_layer_errors(tiny_model, passkey):
    config = make_config(MethodName.DENSE, block_size=64)
    result = prefill_against_dense(tiny_model, passkey.input_ids, MethodName.DENSE, config, max_new_tokens=0,
                                   layer_errors=False)
    doc = report_document(result, command="c", machine="m", loaded=tiny_model, prompt=passkey, config=config,
                          lookup_note=None, bench=False)
    assert result.layer_errors is None and doc["summary"]["mean_layer_error"] is None
    assert doc["summary"]["kl_last"] == pytest.approx(0.0, abs=1e-6) and doc["summary"]["top1_last"]
    assert doc["summary"]["answer_matches_dense"] is None  # nothing generated
