"""Benchmarks and checks (`ppllava-hermes bench NAME`, or `python evaluate/NAME.py` in a checkout); results go to `docs/results/`."""

import os
import platform
import subprocess


def provenance_md(command: str, machine: str, title: str = "Command:") -> list[str]:
    """Markdown lines naming how a results file was made: the exact command and the machine, each fenced."""
    return [title, "", "```", command, "```", "", "Machine:", "", "```", machine, "```"]


def machine_description(device: str = "cpu") -> str:
    """What the results were measured on: Python, torch and its threads, the CPU (and GPU), in a few lines."""
    import torch

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, "
             f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}"]
    try:
        # --all: plain nproc honours OMP_NUM_THREADS and would report 1.
        nproc = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=False).stdout.strip()
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
        lines.append(f"CPU: {model}, nproc {nproc} (shared with other jobs)")
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        lines.append(f"GPU: {torch.cuda.get_device_name(0)}")
    return "\n".join(lines)
