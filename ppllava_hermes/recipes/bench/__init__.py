"""Benchmarks and checks (`ppllava-hermes bench NAME`, or `python evaluate/NAME.py` in a checkout); results go to `docs/results/`."""


def provenance_md(command: str, machine: str, title: str = "Command:") -> list[str]:
    """Markdown lines naming how a results file was made: the exact command and the machine, each fenced."""
    return [title, "", "```", command, "```", "", "Machine:", "", "```", machine, "```"]
