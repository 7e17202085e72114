"""Writes the CIFAR-10 table into experiments/RESULTS.md and the kNN curves figure.

  python experiments/cifar10/table.py [--results=...] [--markdown=...] [--figure=...]

Reads the rows run.py appended to results.jsonl (the latest row of each method wins),
replaces the section between the markers below in RESULTS.md (appending the markers
if absent; the rest of the file is kept) and plots every method's kNN top-1 curve.
"""
import argparse
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- cifar10-table -->", "<!-- /cifar10-table -->"
NOTE = ("CIFAR-10 from ../shared/datasets/cifar10 (JPEG, about quality 75, so slightly lossy "
        "next to the original pixels), 50,000 train / 10,000 test images. kNN: weighted, "
        "k = 200, T = 0.1, on the test set; best = the highest monitor over the run. "
        "Linear: offline, frozen backbone, random crop + flip. Anchor: lightly's benchmark "
        "kNN top-1 (ResNet-18, 200 epochs, batch 512). images/s and s/epoch count training "
        "steps only (no compilation, no kNN monitors). Curves: `experiments/cifar10/"
        "knn_curves.png`. Rows written by `experiments/cifar10/run.py`.")


def read_rows(path: str) -> list[dict]:
  latest = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        latest[row["method"]] = row
  return list(latest.values())


def percent(x) -> str:
  return "-" if x is None else f"{100 * x:.2f}%"


def number(x, fmt: str) -> str:
  return "-" if x is None else format(x, fmt)


def markdown(rows: list[dict]) -> str:
  lines = [NOTE, "",
           "| method | kNN top-1 | best kNN | linear top-1 | anchor | images/s | s/epoch "
           "| epochs | card | date | command |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['method']} | {percent(r['knn_top1'])} | {percent(r['knn_top1_best'])} "
        f"| {percent(r['linear_top1'])} | {percent(r.get('anchor_knn_top1'))} "
        f"| {number(r['images_per_s'], ',.0f')} | {number(r['s_per_epoch'], '.2f')} "
        f"| {number(r['epochs'], 'g')} | {r['card']} | {r['date']} | `{r['command']}` |")
  return "\n".join(lines)


def write_section(path: str, body: str):
  """Replaces the text between BEGIN and END, or appends both markers; keeps the rest."""
  text = open(path).read() if os.path.exists(path) else ""
  section = f"{BEGIN}\n{body}\n{END}"
  if BEGIN in text and END in text:
    head, rest = text.split(BEGIN, 1)
    text = head + section + rest.split(END, 1)[1]
  else:
    text = text + ("\n" if text and not text.endswith("\n") else "") + "\n" + section + "\n"
  with open(path, "w") as f:
    f.write(text)


def curve(row: dict) -> list:
  if row.get("knn_curve"):
    return row["knn_curve"]
  points = {}   # rows without the curve: read their workdir's metrics.jsonl
  if os.path.exists(row.get("metrics", "")):
    with open(row["metrics"]) as f:
      for line in map(json.loads, filter(str.strip, f)):
        if "knn_top1" in line:
          points[line["step"] / row["steps_per_epoch"]] = line["knn_top1"]
  return sorted(points.items())


def plot(rows: list[dict], path: str):
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in rows:
    points = curve(r)
    if points:
      epochs, top1 = zip(*points)
      ax.plot(epochs, [100 * t for t in top1], marker=".", label=r["method"])
  ax.set(xlabel="epoch", ylabel="kNN top-1 (%)", title="CIFAR-10, weighted kNN (k=200)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--results", default=os.path.join(HERE, "results.jsonl"))
  p.add_argument("--markdown", default=os.path.join(HERE, "..", "RESULTS.md"))
  p.add_argument("--figure", default=os.path.join(HERE, "knn_curves.png"))
  args = p.parse_args(argv)
  rows = sorted(read_rows(args.results), key=lambda r: r["method"])
  write_section(args.markdown, markdown(rows))
  plot(rows, args.figure)
  print(f"{len(rows)} row(s) -> {args.markdown}, {args.figure}")


if __name__ == "__main__":
  main()
