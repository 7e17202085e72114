"""The valid values of every number of a config, and of the evaluate CLI's flags, in one
place: `config.validate` and `python -m ssl_jax.evaluate` check them before anything
compiles, each mistake as one ConfigError line naming the field and what it takes."""
import dataclasses
import numbers

import ml_collections

from ssl_jax.errors import ConfigError

# Every number of a config has its valid values here, checked by `validate` before
# anything compiles: RANGES by field, NAME_RULES by the field's name for the fields not
# in RANGES (method sections included: any `*_prob` is a probability, any `*temp` > 0).

@dataclasses.dataclass(frozen=True)
class Range:
  """Valid values of a number: [low, high], either end open (low_open) or absent (None)."""
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  note: str = ""   # what a special value means, said with the error

  def holds(self, value) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
      return False
    if self.integer and value != int(value):
      return False
    above = self.low is None or value > self.low or (value == self.low and not self.low_open)
    below = self.high is None or value < self.high or (value == self.high and not self.high_open)
    return above and below and abs(value) != float("inf")

  def __str__(self) -> str:
    kind = "an integer" if self.integer else "a number"
    if self.low is not None and self.high is not None:
      return (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
              f"{')' if self.high_open else ']'}")
    if self.low is not None:
      return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
    return kind


@dataclasses.dataclass(frozen=True)
class Pair:
  """(min, max), both in `each`, min <= max: a crop's area scale or aspect ratio."""
  each: Range
  note: str = ""

  def holds(self, value) -> bool:
    return (isinstance(value, (tuple, list)) and len(value) == 2 and
            all(self.each.holds(v) for v in value) and value[0] <= value[1])

  def __str__(self) -> str:
    return f"a pair (min, max) of numbers {str(self.each).split(' ', 2)[-1]}, min <= max"


def count(low: int = 0, note: str = "") -> Range:
  return Range(low, integer=True, note=note)


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)
CROP_SCALE = Pair(Range(0, 1, low_open=True), "write it as '(min, max)', e.g. '(0.2, 1.0)'")

RANGES = {
    "seed": Range(integer=True),
    "data_image_size": count(0, "0 = keep the stored size"),
    "image_size": count(8),
    "batch_size": count(1),
    "num_epochs": NON_NEGATIVE,
    "num_steps": count(0, "0 = use num_epochs"),
    "model.depth": count(1),
    "model.width": POSITIVE,
    "model.sk_ratio": NON_NEGATIVE,
    "model.patch_size": count(1),
    "model.num_heads": count(1),
    "model.drop_path": Range(0, 1, high_open=True),
    "head.num_layers": count(0),
    "head.hidden_dim": count(0, "0 = the backbone's width"),
    "head.out_dim": count(1),
    "head.bottleneck_dim": count(1),
    "head.finetune_layer": count(0),
    "loss.chunk_size": count(0, "0 = all rows at once"),
    "optimizer.base_lr": POSITIVE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.weight_decay_end": NON_NEGATIVE,
    "optimizer.momentum": Range(0, 1, high_open=True),
    "optimizer.trust_coefficient": POSITIVE,
    "optimizer.final_lr": NON_NEGATIVE,
    "augment.crop_ratio": Pair(POSITIVE, "write it as '(min, max)', e.g. '(0.75, 1.333)'"),
    "augment.color_strength": NON_NEGATIVE,
    "eval.knn_k": count(1),
    "eval.batch_size": count(1),
    "eval.plot_points": count(0, "0 = no t-SNE plot"),
    "eval.probe_lr": POSITIVE,
    "eval.crop_proportion": Range(0, 1, low_open=True),
    "log_every_steps": count(1),
    "checkpoint.every_steps": count(0, "0 = only at the end"),
    "checkpoint.keep": count(1),
}
# (name endings, range) for the fields RANGES does not list; a sequence (one value per
# view, the lr_steps_epochs milestones) must hold such numbers.
NAME_RULES = (
    (("crop_scale", "crops_scale"), CROP_SCALE),
    (("_prob", "_probs"), PROBABILITY),
    (("temperature", "_temp"), POSITIVE),
    (("momentum",), PROBABILITY),
    (("epochs",), NON_NEGATIVE),
)

# The flags of `python -m ssl_jax.evaluate`; None (unset) takes the protocol's default.
EVALUATE_FLAG_RANGES = {
    "epochs": count(1, "leave it unset for the protocol's default"),
    "batch_size": count(0, "0 = scaled to the data"),
    "base_lr": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "label_fraction": Range(0, 1, low_open=True, note="use 0.01 or 0.1"),
    "finetune_layer": count(-1, "-1 = config.head.finetune_layer"),
    "temperature": POSITIVE,
    "label_weight": PROBABILITY,
    "teacher_epochs": count(0, "0 = semi's default"),
}


def range_of(field: str):
  """The valid values of the config field `field` ("a.b"), or None when unchecked."""
  if field in RANGES:
    return RANGES[field]
  name = field.rsplit(".", 1)[-1]
  return next((spec for endings, spec in NAME_RULES if name.endswith(endings)), None)


def _fields(config, prefix: str = ""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _fields(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _in_range(spec, value) -> bool:
  if isinstance(spec, Range) and isinstance(value, (tuple, list)):
    return all(spec.holds(v) for v in value)
  return spec.holds(value)


def range_error(name: str, value, spec) -> str:
  """`name=value must be <range>; <note>`: one line naming the field and what it takes."""
  wanted = f"be {spec}"
  if isinstance(spec, Range) and isinstance(value, (tuple, list)):   # one value per view...
    wanted = "hold only " + str(spec).replace("an integer", "integers").replace("a number",
                                                                              "numbers")
  shown = tuple(value) if isinstance(value, list) else value
  return f"{name}={shown!r} must {wanted}" + (f"; {spec.note}" if spec.note else "")


def check_ranges(config):
  """A ConfigError naming the first config field outside its range (see RANGES)."""
  for field, value in _fields(config):
    spec = range_of(field)
    if spec is not None and not _in_range(spec, value):
      raise ConfigError(range_error(f"config.{field}", value, spec))


def check_evaluate_flags(values: dict):
  """A ConfigError naming the first evaluate flag outside its range; None = unset."""
  for name, value in values.items():
    spec = EVALUATE_FLAG_RANGES.get(name)
    if spec is not None and value is not None and not _in_range(spec, value):
      raise ConfigError(range_error(f"--{name}", value, spec))
