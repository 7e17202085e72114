"""PNG plots in workdir/plots: training curves from metrics.jsonl and a 2-D t-SNE of eval
features coloured by class.

scikit-learn is not a dependency, so t-SNE is a small exact implementation in numpy
(van der Maaten & Hinton 2008: perplexity-calibrated Gaussian affinities, Student-t
similarities, early exaggeration, momentum with per-coordinate gains). It costs O(N^2)
memory and time per iteration, which is why the plot samples at most a few thousand points.
"""
import os

import jax
import matplotlib
import numpy as np

from ssl_jax import metrics as metrics_lib
from ssl_jax.data import pipeline
from ssl_jax.evaluate import knn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position

MAX_TSNE_POINTS = 2000


def plots_dir(workdir: str) -> str:
  path = os.path.join(workdir, "plots")
  os.makedirs(path, exist_ok=True)
  return path


def metric_series(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{key: (steps, values)}; a step logged twice (a rerun's final eval) keeps the last."""
  by_key: dict[str, dict[int, float]] = {}
  for line in metrics_lib.read(workdir):
    for key, value in line.items():
      if key != "step":
        by_key.setdefault(key, {})[line["step"]] = value
  return {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)]))
          for k, v in by_key.items()}


ACCURACY_SUFFIXES = ("top1",)   # drawn together; top-5 is in eval.json
SMOOTHING = 0.9   # TensorBoard's exponential moving average, debiased at the start


def _is_accuracy(key: str) -> bool:
  return key.endswith(ACCURACY_SUFFIXES)


def _is_training(key: str) -> bool:
  return not key.endswith(ACCURACY_SUFFIXES + ("_random_init", "_best", "top5"))


def smoothed(values: np.ndarray, weight: float = SMOOTHING) -> np.ndarray:
  """Debiased exponential moving average (TensorBoard's scalar smoothing)."""
  out, average = np.empty(len(values)), 0.0
  for i, v in enumerate(values):
    average = weight * average + (1 - weight) * v
    out[i] = average / (1 - weight ** (i + 1))
  return out


def embedding_dim(config) -> int:
  """The width of what `embedding_std` measures: the head's output, DINO's backbone's."""
  if config.method == "dino":
    from ssl_jax import models  # pylint: disable=import-outside-toplevel
    return models.backbone(config.model, np.float32, image_size=config.image_size).num_features
  return config.head.out_dim


def _plot_raw_and_smoothed(ax, steps, values, color, label):
  ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
  ax.plot(steps, smoothed(values), color=color, label=label)


def _plot_training(ax, key, steps, values, config):
  if key.endswith("loss") and len(steps) >= 20:   # noisy: smoothed over the raw values
    _plot_raw_and_smoothed(ax, steps, values, "C0", f"smoothed (EMA {SMOOTHING}); raw faint")
    ax.legend(fontsize=7)
  else:
    ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3)
  if key == "embedding_std" and config is not None:
    dim = embedding_dim(config)
    ax.axhline(dim ** -0.5, color="gray", linestyle=":",
               label=f"1/sqrt({dim}): spread uniformly")
    ax.set_ylim(bottom=0)   # collapse is a fall towards 0
    ax.legend(fontsize=7)
  ax.set_ylabel(key)


def _plot_accuracies(ax, keys, series):
  """Evaluations as markers (kNN, the probe on the eval split), the probe's accuracy on its
  training batches smoothed, dashed: the random-init encoder's final kNN accuracy."""
  highest = 0.0
  for i, key in enumerate(keys):
    steps, values = series[key]
    highest = max(highest, values.max())
    if "train" in key and len(steps) >= 20:
      _plot_raw_and_smoothed(ax, steps, values, f"C{i}", f"{key} (training batches)")
    else:
      ax.plot(steps, values, marker="osd^v"[i % 5], color=f"C{i}", label=key)
    if f"{key}_random_init" in series:
      baseline = series[f"{key}_random_init"][1][-1]
      highest = max(highest, baseline)
      ax.axhline(baseline, color=f"C{i}", linestyle="--", linewidth=1,
                 label=f"{key}, random init")
  ax.set_ylim(0, min(1.0, 1.25 * highest) or 1.0)
  ax.set_ylabel("top-1 accuracy")
  ax.set_title("accuracy: kNN and online probe")
  ax.legend(fontsize=7, loc="lower right")


def curves_figure(series: dict, config=None, title: str = ""):
  """One panel per training statistic (loss and lr first), the last with the accuracies
  (monitors and the final evaluation, dashed: the same encoder at its initialisation)."""
  training = sorted((k for k in series if _is_training(k)),
                    key=lambda k: (k != "loss", k != "lr", k))
  accuracies = sorted(k for k in series if _is_accuracy(k))
  panels = training + (["accuracy"] if accuracies else [])
  cols = min(3, max(len(panels), 1))
  rows = max(1, -(-len(panels) // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows + 0.4), squeeze=False)
  for ax, key in zip(axes.flat, panels):
    if key == "accuracy":
      _plot_accuracies(ax, accuracies, series)
    else:
      _plot_training(ax, key, *series[key], config)
      ax.set_title(key)
    ax.set_xlabel("step")
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def plot_curves(workdir: str, config=None) -> str:
  """workdir/plots/curves.png of metrics.jsonl (see curves_figure), titled with the
  method, the run (the workdir's name) and its last step."""
  series = metric_series(workdir)
  last = max((int(steps[-1]) for steps, _ in series.values() if len(steps)), default=0)
  method = config.method if config is not None else ""
  title = f"{method}  |  run {os.path.basename(os.path.normpath(workdir))}  |  step {last}"
  fig = curves_figure(series, config, title.strip(" |"))
  path = os.path.join(plots_dir(workdir), "curves.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
  x = x - x.mean(axis=0)
  if x.shape[1] <= dims:
    return x
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:dims].T


def _squared_distances(x: np.ndarray) -> np.ndarray:
  sq = (x**2).sum(axis=1)
  return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)


def _affinities(x: np.ndarray, perplexity: float) -> np.ndarray:
  """Symmetric P: per row, a Gaussian whose precision (bisected for all rows at once)
  gives the row the entropy log(perplexity)."""
  n = len(x)
  d = _squared_distances(x)
  np.fill_diagonal(d, np.inf)
  d = d - d.min(axis=1, keepdims=True)   # shifts each row; the normalised row is unchanged
  target = np.log(perplexity)
  beta, lo, hi = np.ones(n), np.zeros(n), np.full(n, np.inf)
  for _ in range(100):
    p = np.exp(-d * beta[:, None])
    total = p.sum(axis=1)
    entropy = np.log(total) + beta * (np.where(np.isinf(d), 0, d) * p).sum(axis=1) / total
    too_flat = entropy > target
    lo, hi = np.where(too_flat, beta, lo), np.where(too_flat, hi, beta)
    beta = np.where(np.isinf(hi), beta * 2, (lo + hi) / 2)
  p = p / p.sum(axis=1, keepdims=True)
  return np.maximum((p + p.T) / (2 * n), 1e-12)


def tsne(x: np.ndarray, perplexity: float = 30.0, iterations: int = 500,
         seed: int = 0) -> np.ndarray:
  """(N, D) -> (N, 2), exact t-SNE; N <= MAX_TSNE_POINTS."""
  n = len(x)
  if n > MAX_TSNE_POINTS:
    raise ValueError(f"exact t-SNE of {n} points is too slow; sample <= {MAX_TSNE_POINTS}")
  x = _pca(np.asarray(x, np.float64), 50)
  p = _affinities(x, min(perplexity, (n - 1) / 3))
  exaggeration, exaggerated_steps = 12.0, min(250, iterations // 4)
  lr = max(n / exaggeration / 4, 50.0)   # the "auto" rate of Belkina et al. (2019)
  y = 1e-4 * np.random.default_rng(seed).normal(size=(n, 2))
  velocity, gains = np.zeros_like(y), np.ones_like(y)
  for i in range(iterations):
    num = 1.0 / (1.0 + _squared_distances(y))
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.sum(), 1e-12)
    w = ((exaggeration if i < exaggerated_steps else 1.0) * p - q) * num
    grad = 4.0 * (w.sum(axis=1, keepdims=True) * y - w @ y)
    gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8)
    gains = np.maximum(gains, 0.01)
    velocity = (0.5 if i < exaggerated_steps else 0.8) * velocity - lr * gains * grad
    y = y + velocity
    y = y - y.mean(axis=0)
  return y


def plot_embedding(points: np.ndarray, labels: np.ndarray, classes, path: str,
                   title: str = "t-SNE of eval features") -> str:
  fig, ax = plt.subplots(figsize=(6, 5.5))
  cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
  for c in np.unique(labels):
    name = classes[c] if 0 <= c < len(classes) else str(c)
    mask = labels == c
    ax.scatter(points[mask, 0], points[mask, 1], s=6, color=cmap(int(c) % cmap.N),
               label=name)
  if len(classes) <= 20:
    ax.legend(fontsize=7, markerscale=2, loc="best")
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def sample_indices(n: int, count: int, seed: int = 0) -> np.ndarray:
  count = min(n, count, MAX_TSNE_POINTS)
  return np.sort(np.random.default_rng(seed).choice(n, count, replace=False))


def write_embedding(workdir: str, features: np.ndarray, labels: np.ndarray, classes,
                    seed: int = 0) -> str:
  points = tsne(features, seed=seed)
  return plot_embedding(points, np.asarray(labels), classes,
                        os.path.join(plots_dir(workdir), "embedding_tsne.png"))


def write_at_end(workdir, method, config, variables, test, mesh) -> list[str]:
  """The curves and, when config.eval.plot_points > 0, the t-SNE of a sample of `test`."""
  if isinstance(test, pipeline.EvalSplit):   # streamed: the sample, decoded into memory
    test = test.sample(config.eval.plot_points, config.seed)
  sample = sample_indices(len(test), config.eval.plot_points, config.seed)
  features = None
  if len(sample):   # every process takes part in the sharded extraction
    encode = lambda v, x: method.encode(v, x, config)  # pylint: disable=unnecessary-lambda-assignment
    features = knn.extract_features(encode, variables, test.images[sample], mesh,
                                    config.eval.batch_size, config.image_size,
                                    crop_proportion=config.eval.crop_proportion)
  if jax.process_index() != 0:
    return []
  paths = [plot_curves(workdir, config)]
  if features is not None:
    paths.append(write_embedding(workdir, features, test.labels[sample], test.classes,
                                 config.seed))
  print(f"Plots: {', '.join(paths)}", flush=True)
  return paths
