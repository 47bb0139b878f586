"""gpu_efficiency: the shipped configurations parse into transformers' classes with the published sizes, and
the reduced (smoke) models stream and answer on the CPU under a policy; the smoke report is labelled."""

from __future__ import annotations

import pytest
import torch

from ppllava_hermes.recipes.bench import gpu_efficiency as ge

# Published parameter counts (model cards): a check that the transcribed configurations are the real ones.
PARAMS_B = {"qwen2_5_vl_7b": 8.29, "llava_onevision_qwen2_7b": 8.03, "qwen3_vl_8b": 8.77}


@pytest.mark.parametrize("name", list(ge.MODELS))
def test_published_configs_build_with_their_sizes(name):
    raw = ge.published_config(name)
    config_cls, model_cls = ge.hf_classes(raw["model_type"])
    config = config_cls.from_dict(raw)
    with torch.device("meta"):
        model = model_cls(config)
    assert sum(p.numel() for p in model.parameters()) / 1e9 == pytest.approx(PARAMS_B[name], abs=0.01)
    reduced = config_cls.from_dict(ge.reduce_config(raw))
    assert reduced.text_config.num_hidden_layers == 2 and reduced.text_config.hidden_size == 64
    assert reduced.text_config.vocab_size == config.text_config.vocab_size
    fresh = ge.published_config(name)
    ge.reduce_config(fresh)
    assert fresh == ge.published_config(name)  # reduce_config does not touch the dict it reduces


def test_smoke_model_streams_and_reports(tmp_path):
    args = ge.parse_args(["--smoke", "--models", "llava_onevision_qwen2_7b", "--frames", "8", "--questions", "1",
                          "--answer-tokens", "2", "--policies", "hermes", "--out-dir", str(tmp_path)])
    adapter = ge.build("llava_onevision_qwen2_7b", "cpu", torch.float32, smoke=True)
    assert adapter.model.config.text_config.num_hidden_layers == 2
    skipped: list[str] = []
    deadline = ge.Deadline(end=float("inf"))
    rows = ge.run_policy("llava_onevision_qwen2_7b", adapter, "hermes", 384, 0.01, 1, args, deadline, skipped,
                         lambda _: None)
    assert [list(r) for r in rows] == [ge.FIELDS] and rows[0]["frames"] == 8 and rows[0]["peak_mem_bytes"] is None
    assert rows[0]["kv_bytes"] > 0 and rows[0]["ttft_with_encode_ms"] == pytest.approx(rows[0]["ttft_ms"] + 10, abs=1e-3)
    ge.write_report(rows, skipped, tmp_path, "cmd", args, 1.0)
    md = (tmp_path / "gpu_efficiency.md").read_text()
    assert "CPU SMOKE RUN" in md and "NOT results" in md and "ppllava-hermes bench gpu_efficiency" in md
    assert not (tmp_path / "gpu_efficiency.json").exists()
