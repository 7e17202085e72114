"""Images/s per CPU core of the host input pipeline, SimCLR's two-view recipe.

The host's share of the recipe is decode + two random resized crops (scale 0.08-1,
aspect 3/4-4/3) + flips; colour jitter, grayscale and blur run on the accelerator
(augment.make_views). Measured at 224 px on JPEGs of ImageNet-like size (~500x375) that
this script writes to a temporary folder, and at 32 px on the CIFAR-10 folder, for:
  tf.data      ssl_jax.data.pipeline.TFDataLoader (what training uses)
  PIL          the same geometric recipe with PIL, as torchvision applies it to PIL
               images (crop, bilinear resize with antialiasing, flip), one process
  PIL full recipe  geometric + colour jitter, grayscale, blur on the CPU, as a torchvision
               SimCLR loader runs the whole recipe (what the device does for tf.data)
  torchvision  RandomResizedCrop + RandomHorizontalFlip + PILToTensor, when installed

Per core: the process is pinned to --cores CPUs (default 1) before TensorFlow starts;
tf.data's images/s are divided by --cores, the single-threaded PIL/torchvision loops
are not. On a shared machine, read the figures next to the load average.

  python experiments/bench_input.py [--cores=1] [--cifar_dir=../shared/datasets/cifar10]
"""
import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def write_jpegs(root: str, count: int, seed: int = 0) -> None:
  """Smooth random photos-to-be (~500x375, quality 90) in <root>/train/<class>/."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    folder = os.path.join(root, "train", f"class{i % 4}")
    os.makedirs(folder, exist_ok=True)
    w, h = (500, 375) if i % 3 else (375, 500)
    coarse = rng.integers(0, 256, (h // 25, w // 25, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, np.int16) + rng.integers(-12, 13, (h, w, 3), dtype=np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
        os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def bench_tfdata(root: str, size: int, batch: int, batches: int) -> float:
  from ssl_jax import parallel  # pylint: disable=import-outside-toplevel
  from ssl_jax.data import pipeline, tf_sources  # pylint: disable=import-outside-toplevel
  from ssl_jax.data.augment import View  # pylint: disable=import-outside-toplevel
  view = View(size=size, crop_scale=SCALE, crop_ratio=RATIO)
  source = tf_sources.open_source(f"image_folder:{root}", "train")
  data = pipeline.TFDataLoader(source, [view, view], batch, 0, parallel.make_mesh())
  stream = data.host_batches(0)
  for _ in range(2):  # tracing and the pipeline's warm-up
    next(stream)
  start = time.perf_counter()
  for _ in range(batches):
    next(stream)
  return batches * batch / (time.perf_counter() - start)


def pil_pair(path: str, size: int, rng: np.random.Generator) -> list[np.ndarray]:
  """torchvision's RandomResizedCrop + flip on a PIL image, written out with PIL."""
  with Image.open(path) as img:
    img = img.convert("RGB")
    return [np.asarray(_pil_view(img, size, rng)) for _ in range(2)]


def _pil_view(img, size, rng):
  width, height = img.size
  for _ in range(10):
    area = width * height * rng.uniform(*SCALE)
    aspect = np.exp(rng.uniform(np.log(RATIO[0]), np.log(RATIO[1])))
    w, h = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
    if 0 < w <= width and 0 < h <= height:
      top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
      break
  else:
    w, h, top, left = width, height, 0, 0
  out = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
  return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else out


def pil_full_pair(path: str, size: int, rng: np.random.Generator) -> list[Image.Image]:
  """The whole SimCLR recipe on the CPU, as torchvision runs it: crop, flip, colour jitter
  (0.8 strength 1, random order), grayscale (0.2), blur (0.5, sigma 0.1-2)."""
  with Image.open(path) as img:
    img = img.convert("RGB")
    return [_pil_photometric(_pil_view(img, size, rng), rng) for _ in range(2)]


def _pil_photometric(img, rng):
  if rng.random() < 0.8:
    for op in rng.permutation(4):
      if op == 0:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.2, 1.8))
      elif op == 1:
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.2, 1.8))
      elif op == 2:
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.2, 1.8))
      else:  # torchvision's adjust_hue: shift H in PIL's HSV
        h, s, v = img.convert("HSV").split()
        shift = np.uint8(int(rng.uniform(-0.2, 0.2) * 255) % 256)
        h = Image.fromarray(np.asarray(h, np.uint8) + shift, "L")
        img = Image.merge("HSV", (h, s, v)).convert("RGB")
  if rng.random() < 0.2:
    img = img.convert("L").convert("RGB")
  if rng.random() < 0.5:
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 2.0)))
  return img


def bench_python(paths: list[str], make_pair, count: int) -> float:
  paths = [paths[i % len(paths)] for i in range(count)]
  make_pair(paths[0])  # warm caches
  start = time.perf_counter()
  for path in paths:
    make_pair(path)
  return count / (time.perf_counter() - start)


def torchvision_pair(size: int):
  try:
    from torchvision import transforms  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  recipe = transforms.Compose([transforms.RandomResizedCrop(size, SCALE, RATIO),
                               transforms.RandomHorizontalFlip(),
                               transforms.PILToTensor()])

  def pair(path):
    with Image.open(path) as img:
      img = img.convert("RGB")
      return recipe(img), recipe(img)
  return pair


def list_files(root: str) -> list[str]:
  return sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(root, "train"))
                for f in files)[:4096]


def run(name: str, root: str, size: int, batch: int, batches: int, cores: int) -> None:
  paths = list_files(root)
  rng = np.random.default_rng(0)
  rates = {"tf.data": bench_tfdata(root, size, batch, batches),
           "PIL": bench_python(paths, lambda p: pil_pair(p, size, rng), batch * batches // 4),
           "PIL full recipe": bench_python(paths, lambda p: pil_full_pair(p, size, rng),
                                           batch * batches // 8)}
  tv = torchvision_pair(size)
  rates["torchvision"] = (bench_python(paths, tv, batch * batches // 4) if tv else None)
  rates["tf.data"] /= cores   # the Python loops use one core whatever --cores says
  shown = " | ".join(f"{k} {v:7.0f}" if v else f"{k} (not installed: skipped)"
                     for k, v in rates.items())
  print(f"{name}, images/s per core: {shown}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cores", type=int, default=1)
  parser.add_argument("--images", type=int, default=256, help="JPEGs to generate")
  parser.add_argument("--cifar_dir", default=os.environ.get(
      "SSL_JAX_CIFAR10_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared",
                                          "datasets", "cifar10")))
  args = parser.parse_args()
  os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
  print(f"SimCLR two-view host recipe (decode, 2 x random resized crop + flip) on "
        f"{args.cores} core(s)", flush=True)
  with tempfile.TemporaryDirectory() as root:
    write_jpegs(root, args.images)
    run("224 px, ~500x375 JPEGs", root, 224, 64, 8, args.cores)
  if os.path.isdir(args.cifar_dir):
    run("32 px, CIFAR-10 folder (32x32 JPEGs)", args.cifar_dir, 32, 256, 16, args.cores)
  else:
    print(f"32 px: no CIFAR-10 folder at {args.cifar_dir}; pass --cifar_dir")


if __name__ == "__main__":
  main()
