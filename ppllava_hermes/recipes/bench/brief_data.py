"""ShapesWorld data in the brief's three benchmark formats: ``ppllava-hermes bench brief_data --out DIR``.

Writes StreamBench ``streaming_bench_v0.3.json``, MSR-VTT ``test_videodatainfo.json`` and EgoSchema
``questions.json`` / ``subset_answers.json`` with their mp4 videos under ``DIR`` in the layout
``ppllava-hermes eval --suite brief --data DIR`` reads (``ppllava_hermes.evaluation.brief_data`` says what
is written and how; ``--data shapesworld`` makes the same files itself). Prints the record counts.
"""

from __future__ import annotations

import argparse
import json
import sys

from ppllava_hermes.specs import positive_float, positive_int


def main(argv: list[str] | None = None) -> int:
    from ppllava_hermes.evaluation.brief_data import BriefDataConfig, write_brief_data

    p = argparse.ArgumentParser(prog="ppllava-hermes bench brief_data", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="data folder to write (files already there are replaced)")
    p.add_argument("--videos", type=positive_int, default=6, help="videos per benchmark (default 6)")
    p.add_argument("--duration", type=positive_float, default=60.0,
                   help="seconds of a StreamBench stream / of the world an EgoSchema clip is cut from (default 60)")
    p.add_argument("--caption-duration", type=positive_float, default=20.0,
                   help="seconds of an MSR-VTT clip (default 20)")
    p.add_argument("--seed", type=int, default=0, help="first ShapesWorld video index (default 0)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="seed range (default test)")
    args = p.parse_args(argv)
    try:
        config = BriefDataConfig(videos=args.videos, duration=args.duration, caption_duration=args.caption_duration,
                                 seed=args.seed, split=args.split)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    data = write_brief_data(args.out, config)
    print(json.dumps(data.describe(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
