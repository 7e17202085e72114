"""Every format's config, as the converter writes it into a workdir, is read back by the
offline evaluation. test_pretrained*.py map each format's file onto its config's state
(every path, shape and value) and run one file through both CLIs (dino_vit); this runs the
rest of the chain for each format's config, shrunk to seconds: the widths and sizes of
heads, queues and banks and the ResNets' depth, not the architecture's options (padding,
init, selective kernels, projection shortcuts, position embeddings)."""
import json
import os
import subprocess
import sys

import ml_collections

from ssl_jax.pretrained import FORMATS

ROOT = os.path.join(os.path.dirname(__file__), "..")

# (format, variant): each format's default, MoCo v3's ResNet-50 and SimCLR v2's selective
# kernels.
CASES = [(name, "r50_1x_sk1" if name == "simclr_v2_tf" else None) for name in sorted(FORMATS)]
CASES.append(("moco_v3", "resnet50"))


def shrunk(config, dataset: str):
  """`config` at 32 px on `dataset`: the ResNet 18 deep and 1/16 wide, the ViT one block
  deep, and every
  size of 200 or more in a head or method section (hidden widths, DINO's 65,536 outputs,
  MoCo's queue, NCE's negatives, SwAV's prototypes) 16."""
  config.update(dataset=f"packed:{dataset}", eval_split="test", image_size=32, batch_size=16)
  config.eval.crop_proportion = 1.0
  if config.model.name == "vit":
    config.model.depth = 1
    config.eval.linear.vit_blocks = 1
  else:
    config.model.update(width=1 / 16, depth=18)
  for name, section in config.items():
    if isinstance(section, ml_collections.ConfigDict) and name not in ("model", "eval", "run"):
      for field, value in section.items():
        if isinstance(value, int) and not isinstance(value, bool) and value >= 200:
          section[field] = 16
  return config


def write_and_evaluate(dataset: str, root: str) -> dict:
  """{format: eval.json's kNN entry} of each case's workdir under `root`: written by the
  converter (a fresh state: no file) and evaluated by what python -m ssl_jax.evaluate runs."""
  from ssl_jax import pretrained  # pylint: disable=import-outside-toplevel
  from ssl_jax.evaluate import protocols  # pylint: disable=import-outside-toplevel
  from ssl_jax.pretrained import FORMATS  # pylint: disable=import-outside-toplevel
  from ssl_jax.pretrained.formats import Converted  # pylint: disable=import-outside-toplevel
  results = {}
  for name, variant in CASES:
    case = f"{name}:{variant or ''}"
    config = shrunk(FORMATS[name].config(variant), dataset)
    workdir = os.path.join(root, case)
    pretrained.write_workdir(config, Converted(params={}), workdir,
                             dict(checkpoint="(none: a fresh state)", format=name))
    results[case] = protocols.evaluate(workdir, "knn")
  return results


def test_each_formats_workdir_is_evaluated(tmp_path, small_dataset):
  """In one process on one device, as a user converts and evaluates (the import of JAX and
  the compiles shared: 13 workdirs in about a minute)."""
  from conftest import ONE_THREAD_PER_OP  # pylint: disable=import-outside-toplevel
  # (not at the top: the subprocess imports this module, and conftest sets 8 devices)
  program = ("import json, sys; sys.path.insert(0, 'tests'); "
             "from test_pretrained_workdirs import write_and_evaluate; "
             f"print(json.dumps(write_and_evaluate({small_dataset!r}, {str(tmp_path)!r})))")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=ONE_THREAD_PER_OP,
             JAX_DISABLE_MOST_OPTIMIZATIONS="1")   # tiny networks: compiles dominate
  proc = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert sorted(results) == sorted(f"{n}:{v or ''}" for n, v in CASES)
  for case, result in results.items():
    name, variant = case.split(":")
    assert result["step"] == 0 and 0.0 <= result["top1"] <= 1.0, case
    workdir = tmp_path / case
    assert json.loads((workdir / "eval.json").read_text())["knn"] == dict(result, protocol="knn")
    saved = json.loads((workdir / "config.json").read_text())
    config = FORMATS[name].config(variant or None)   # the format's architecture is kept
    assert saved["method"] == config.method, case
    assert all(saved["model"][k] == config.model[k] for k in
               ("name", "padding", "init", "projection_shortcut", "sk_ratio")), case
