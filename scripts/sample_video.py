"""Write a generated ShapesWorld video (and its event log) to try the CLI on: no download, any length.

    python scripts/sample_video.py /tmp/shapes.mp4 --seconds 60 --seed 3
    ppllava-hermes stream /tmp/shapes.mp4 --model shapesworld --ask "30:what colour is the circle?"

The event log (``<path>.events.json``) says what happened when, so answers can be checked by eye.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppllava_hermes.world.generator import WorldConfig, generate_world, save_mp4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path", type=Path, help="output .mp4")
    p.add_argument("--seconds", type=float, default=60.0, help="video length (default 60)")
    p.add_argument("--fps", type=float, default=1.0, help="frames per second, 0.5 to 2 (default 1)")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    args = p.parse_args(argv)
    world = generate_world(WorldConfig(duration=args.seconds, fps=args.fps), seed=args.seed)
    save_mp4(args.path, world.frames(), world.fps)
    events = [{"time": e.time, "event": e.describe()} for e in world.events]
    Path(f"{args.path}.events.json").write_text(json.dumps(events, indent=1))
    print(f"wrote {args.path} ({world.n_frames} frames, {len(events)} events)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
