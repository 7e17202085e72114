"""Packs an image folder into one .npz file in the ssl_jax packed format.

  python -m ssl_jax.data.pack <image_folder> <out.npz> \
      [--per_class SPLIT=N ...] [--seed 0]

<image_folder> holds <split>/<class>/<image files>. The encoded files are
stored byte for byte, so the output is about as large as the images; load it
with config.dataset = "packed:<out.npz>". Files that cannot be decoded are
listed and left out.
"""

import argparse
import os
import sys

from ssl_jax.data import sources
from ssl_jax.errors import ConfigError


def _split_count(text: str) -> tuple[str, int]:
  split, _, count = text.partition("=")
  if not split or not count.isdigit() or int(count) <= 0:
    raise argparse.ArgumentTypeError(
        f"expected SPLIT=N with N > 0 (e.g. train=500), got {text!r}")
  return split, int(count)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m ssl_jax.data.pack",
      description="Packs <image_folder>/<split>/<class>/<images> into one "
      ".npz file that config.dataset='packed:<out.npz>' loads.")
  parser.add_argument("image_folder", help="folder holding <split>/<class>/")
  parser.add_argument("out", help="output .npz path")
  parser.add_argument(
      "--per_class", type=_split_count, nargs="+", action="extend",
      metavar="SPLIT=N",
      help="pack only these splits, keeping N random files per class")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed for the --per_class selection")
  args = parser.parse_args(argv)
  per_class = dict(args.per_class) if args.per_class else None
  skipped = []
  try:
    counts = sources.pack_image_folder(args.image_folder, args.out, per_class,
                                       args.seed, skipped)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for split, count in counts.items():
    print(f"{split}: {count} images")
  if skipped:
    print(f"left out {len(skipped)} files that could not be decoded:")
    print("\n".join(f"  {path}" for path in skipped))
  print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
