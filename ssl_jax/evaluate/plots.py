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
# Keys of metrics.jsonl that are evaluations (drawn together), not training statistics.
_MONITOR_PREFIXES = ("knn_", "online_", "linear_")


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


def _is_monitor(key: str) -> bool:
  return key.startswith(_MONITOR_PREFIXES) and not key.endswith(("_random_init", "_best"))


def plot_curves(workdir: str) -> str:
  """curves.png: one panel per training statistic (loss and lr first) and one with the
  monitors (kNN, online probe) over steps."""
  series = metric_series(workdir)
  training = [k for k in series if not k.startswith(_MONITOR_PREFIXES)]
  training.sort(key=lambda k: (k != "loss", k != "lr", k))
  monitors = sorted(k for k in series if _is_monitor(k))
  panels = [[k] for k in training] + ([monitors] if monitors else [])
  cols = min(3, max(len(panels), 1))
  rows = max(1, -(-len(panels) // cols))
  fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
  for ax, keys in zip(axes.flat, panels):
    for key in keys:
      steps, values = series[key]
      ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3,
              label=key)
    ax.set_title("kNN / probe monitors" if keys is monitors else keys[0])
    ax.set_xlabel("step")
    if keys is monitors:
      ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
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
                                    config.eval.batch_size, config.image_size)
  if jax.process_index() != 0:
    return []
  paths = [plot_curves(workdir)]
  if features is not None:
    paths.append(write_embedding(workdir, features, test.labels[sample], test.classes,
                                 config.seed))
  print(f"Plots: {', '.join(paths)}", flush=True)
  return paths
