"""``ppllava-hermes eval`` in two real processes (torchrun, the launcher ``accelerate launch --multi_gpu``
uses): each record is answered once, only the main process writes the report, and the merged report
holds the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ppllava_hermes.evaluation import runner

# Wraps the runner's protocol and the report writer to log, per rank, what each process did.
SCRIPT = textwrap.dedent('''
    import json, os, sys
    from ppllava_hermes.evaluation import command, report, runner

    log, argv = sys.argv[1], sys.argv[2:]
    rank = os.environ.get("RANK", "0")
    offline = runner.run_offline

    def run_offline(items, *args, **kwargs):
        with open(os.path.join(log, f"answered-{rank}.jsonl"), "a") as f:
            f.write(json.dumps([index for index, _ in items]) + "\\n")
        return offline(items, *args, **kwargs)

    write = report.write_report

    def write_report(*args, **kwargs):
        open(os.path.join(log, f"wrote-{rank}"), "w").close()
        return write(*args, **kwargs)

    runner.run_offline, report.write_report = run_offline, write_report
    sys.exit(command.main(argv))
''')

EVAL_ARGS = ["--model", "tiny-qwen2.5-vl", "--world-videos", "2", "--world-duration", "6", "--frames", "4",
             "--max-new-tokens", "2", "--no-plots", "--quiet"]


def _rows(path: Path) -> list[tuple]:
    results = json.loads(path.read_text())["runs"][0]["results"]
    return [(r["index"], r["qid"], r["prediction"], r["correct"], r["visual_tokens"]) for r in results]


def test_two_processes_answer_each_record_once_and_rank0_writes_the_merged_report(tmp_path):
    log = tmp_path / "log"
    log.mkdir()
    script = tmp_path / "launch_eval.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT", "ACCELERATE_USE_CPU")}
    # A CPU-only host (what CI is): the case where PartialState() without cpu=True saw one process.
    env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(log), *EVAL_ARGS, "--out", str(tmp_path / "sharded")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    answered = {rank: [i for line in (log / f"answered-{rank}.jsonl").read_text().splitlines()
                       for i in json.loads(line)] for rank in ("0", "1")}
    assert answered["0"] and answered["1"], answered  # both processes took a share
    every = answered["0"] + answered["1"]
    assert sorted(every) == list(range(len(every))), "each record is answered exactly once"
    assert sorted(p.name for p in log.glob("wrote-*")) == ["wrote-0"], "only the main process writes the report"

    single = tmp_path / "single"
    from ppllava_hermes.evaluation import command

    assert command.main([*EVAL_ARGS, "--out", str(single)]) == 0
    assert _rows(tmp_path / "sharded" / "results.json") == _rows(single / "results.json")


def test_process_shard_creates_a_cpu_process_group_only_without_an_accelerator(monkeypatch):
    made = []

    class FakeState:
        def __init__(self, cpu: bool = False) -> None:
            made.append(cpu)
            self.process_index, self.num_processes, self.distributed_type = 1, 2, "MULTI_CPU"

    import accelerate
    import torch

    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(runner, "_accelerator_backend_available", lambda: False)
    assert runner.process_shard() == (1, 2)
    monkeypatch.setattr(runner, "_accelerator_backend_available", lambda: True)
    assert runner.process_shard() == (1, 2)
    assert made == [True, False]  # gloo on CPU hosts; the device backend (NCCL, ...) where there is one

    monkeypatch.undo()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # `accelerate launch --cpu` on a GPU host
    assert runner._accelerator_backend_available() is False
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert runner._accelerator_backend_available() is True

    monkeypatch.setattr(accelerate, "PartialState", FakeState)
    monkeypatch.setenv("WORLD_SIZE", "4")  # the launcher and the process group disagree: refuse
    with pytest.raises(RuntimeError, match="WORLD_SIZE is 4"):
        runner.process_shard()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert runner.process_shard() == (0, 1)
