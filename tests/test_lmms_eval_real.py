"""The lmms-eval wrappers against the real lmms-eval package (skipped where it is not installed).

A local task is built in a temporary folder (a YAML file, its ``utils.py`` and a JSON Lines dataset
whose records point at generated videos) and run through ``lmms-eval`` itself with a tiny random model,
as the chat model (lmms-eval 0.7's default for a model with both) and as the simple one
(``--force_simple``). lmms-eval can fail at start yet exit 0 (with filelock 4.x), so the checks read
the samples file, not only the exit status.

lmms-eval is kept out of the main virtual environment (it pins ``av<16``); CI runs this file in its own
one (see the lead's CI step).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lmms_eval")

TASK = "ppllava_tiny_video"
N_RECORDS = 3
MODEL_ARGS = "pretrained=tiny-qwen2.5-vl,memory=window,budget=64,max_frames_num=4,max_new_tokens=3"

UTILS = textwrap.dedent('''
    def doc_to_visual(doc):
        return [doc["video"]]


    def doc_to_text(doc, lmms_eval_specific_kwargs=None):
        return doc["question"]


    def process_results(doc, results):
        return {"answered": float(isinstance(results[0], str))}
''')


def _write_task(root: Path) -> Path:
    """A task folder: ``<TASK>.yaml``, ``utils.py``, ``records.jsonl`` and ``videos/*.mp4``."""
    from ppllava_hermes.video import write_video

    rng = np.random.default_rng(0)
    (root / "videos").mkdir(parents=True)
    records = []
    for i in range(N_RECORDS):
        path = root / "videos" / f"v{i}.mp4"
        write_video(path, rng.integers(0, 255, (4, 56, 56, 3), dtype=np.uint8), fps=1.0)
        records.append({"id": i, "video": str(path), "question": f"What colour is shape {i}?", "answer": "red"})
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "utils.py").write_text(UTILS)
    (root / f"{TASK}.yaml").write_text(textwrap.dedent(f"""
        task: {TASK}
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {root / "records.jsonl"}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 3
          until: ["\\n\\n"]
        process_results: !function utils.process_results
        metric_list:
          - metric: answered
            aggregation: mean
            higher_is_better: true
    """))
    return root


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HOME=str(tmp / "hf"), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    return env


def _lmms_eval(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    # Run from the temporary folder: the repository's top-level evaluate/ package would shadow Hugging
    # Face's `evaluate`, which lmms-eval imports.
    return subprocess.run([sys.executable, "-m", "lmms_eval", *args], cwd=tmp, env=_env(tmp), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    return _write_task(tmp_path_factory.mktemp("lmms_task"))


def test_filelock_is_below_4():
    # lmms-eval 0.7.3 with filelock 4.x: "No module named 'filelock._api'" at start, and exit status 0.
    assert int(version("filelock").split(".")[0]) < 4, "the lmms-eval extra must pin filelock<4"


def test_lmms_eval_models_lists_the_plugin(tmp_path):
    done = _lmms_eval(tmp_path, "models", "--aliases")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("ppllava_hermes")]
    assert rows and rows[0][:2] == ["ppllava_hermes", "chat+simple"], done.stdout[-2000:]
    assert "ppllava-hermes" in rows[0]  # the alias


@pytest.mark.parametrize("mode", ["chat", "simple"])
def test_a_local_task_runs_through_lmms_eval_with_one_answer_per_record(task_dir, tmp_path, mode):
    out = tmp_path / "out"
    args = ["--model", "ppllava_hermes", "--model_args", MODEL_ARGS, "--tasks", TASK, "--include_path", str(task_dir),
            "--batch_size", "1", "--log_samples", "--output_path", str(out), "--verbosity", "WARNING"]
    done = _lmms_eval(tmp_path, *args, *(["--force_simple"] if mode == "simple" else []))
    log = done.stdout[-3000:] + done.stderr[-3000:]
    assert done.returncode == 0, log
    samples = list(out.rglob(f"*samples_{TASK}.jsonl"))
    assert len(samples) == 1, f"no samples file (lmms-eval may have failed yet exited 0):\n{log}"
    rows = [json.loads(line) for line in samples[0].read_text().splitlines() if line.strip()]
    assert sorted(r["doc_id"] for r in rows) == list(range(N_RECORDS)), "one answer per record"
    for r in rows:
        answer = r["filtered_resps"][0] if isinstance(r["filtered_resps"], list) else r["filtered_resps"]
        assert isinstance(answer, str)
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    assert results["results"][TASK]["answered,none"] == 1.0
    model_class = "PPLLaVAHermesChatLMM (chat)" if mode == "chat" else "PPLLaVAHermesLMM (simple)"
    assert results["config"]["model_backend"] == f"ppllava_hermes.integrations.lmms_eval.{model_class}"


class _Request:
    def __init__(self, *args):
        self.args = args


def test_models_pickle_without_their_weights_and_rebuild_on_first_use(task_dir):
    from lmms_eval.api.model import lmms

    from ppllava_hermes.integrations import lmms_eval as wrapper

    doc = json.loads((task_dir / "records.jsonl").read_text().splitlines()[0])
    for cls, request in (
        (wrapper.PPLLaVAHermesLMM, _Request(doc["question"], {"max_new_tokens": 2}, lambda d: [d["video"]], 0, "t",
                                            "test")),
        (wrapper.PPLLaVAHermesChatLMM, _Request(doc["question"], lambda d: [{"role": "user", "content": [
            {"type": "video", "url": d["video"]}, {"type": "text", "text": d["question"]}]}], {"max_new_tokens": 2},
            0, "t", "test")),
    ):
        assert issubclass(cls, lmms) and cls.is_simple == (cls is wrapper.PPLLaVAHermesLMM)
        model = cls(pretrained="tiny-qwen2.5-vl", memory="window", budget="64", max_frames_num="4")
        model.task_dict = {"t": {"test": {0: doc}}}
        blob = pickle.dumps(model)
        assert len(blob) < 100_000, "the weights are not pickled"
        clone = pickle.loads(blob)
        assert type(clone) is cls and clone._engine is None and clone.task_dict == model.task_dict
        assert (clone.rank, clone.world_size, clone.max_frames_num) == (model.rank, model.world_size, 4)
        # the tiny model is seeded: the rebuilt one answers as the original
        assert clone.generate_until([request]) == model.generate_until([request])
        assert clone._engine is not None
