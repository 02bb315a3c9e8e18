"""The base configuration every ``configs/*.py`` starts from, and its validation.

Configs are code (ml_collections): a config file's ``get_config(arg)`` calls
``base_config()``, sets what differs and returns it. The base holds every key the
trainer reads, so a key that is not here is a typo: ``validate`` names it.
"""

from __future__ import annotations

import importlib.util
import math
import os

import ml_collections

from ssfer_jax import algorithms
from ssfer_jax.models import batch_norm, pooling


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.algorithm = "fixmatch"
  c.algo = algorithms.get_algorithm("fixmatch").default_config()
  c.pseudo_label_source = "teacher"   # 'teacher' (EMA) or 'student' (stop-gradient)
  c.threshold_stats_source = "pseudo_label_source"  # or 'teacher': labeled-batch threshold statistics from the EMA teacher

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "synthetic"        # synthetic | rafdb | affectnet7 | affectnet8 | fer2013 | ferplus | sfew | image_folder | csv_list
  c.dataset.data_dir = ""             # where prepared TFDS datasets live
  c.dataset.seed = 0                  # synthetic: generator seed
  c.dataset.num_train = 6000          # synthetic: training images
  c.dataset.num_test = 1500           # synthetic: test images
  c.dataset.render_size = 40          # synthetic: rendered side in pixels
  c.dataset.nuisance = 0.3            # synthetic: scale of pose/colour/lighting/occlusion/noise
  c.dataset.builder_kwargs = ml_collections.ConfigDict()  # extra options for real-dataset builders

  c.data = ml_collections.ConfigDict()
  c.data.image_size = 40
  c.data.mean = (0.5, 0.5, 0.5)
  c.data.std = (0.25, 0.25, 0.25)
  c.data.batch_size = 16              # labeled images per global step
  c.data.uratio = 3                   # unlabeled images per labeled image
  c.data.labels_per_class = 10
  c.data.num_labels = 0               # with label_protocol='adacm' or 'total_equal'
  c.data.label_percent = 0.0          # with label_protocol='percent' (% of the training set)
  c.data.label_counts = ()            # with label_protocol='long_tailed' (most frequent class first)
  c.data.label_protocol = "uniform"   # per_class (alias uniform) | adacm | total_equal | percent | long_tailed (data/splits.py)
  c.data.labeled_ids_file = ""        # reproduce a published split
  c.data.split_seed = 0
  c.data.unlabeled_includes_labeled = False
  c.data.class_balanced = False
  c.data.crop_pad = 4
  c.data.randaugment_n = 3
  c.data.cutout = 0.5
  c.data.num_workers = 0              # grain worker processes (0: threads in this process)
  c.data.read_threads = 2
  c.data.prefetch = 4

  c.model = ml_collections.ConfigDict()
  c.model.backbone = "small_cnn"      # small_cnn | resnet18 | resnet50
  c.model.head_dropout = 0.5
  c.model.norm_scale = 16.0           # scale of the L2-normalised embedding (1.0 = plain head)
  c.model.attention = False
  c.model.attention_mode = "pixel"    # pixel | grid
  c.model.attention_grid = 3
  c.model.feature_dropout = 0.0       # probability of dropping one feature-map block
  c.model.feature_dropout_block = 0.35
  c.model.feature_dropout_mode = "random_block"  # random_block | max_attention
  c.model.compute_dtype = "float32"   # float32 | bfloat16 (parameters stay float32)
  c.model.max_pool = "fast"           # fast (cheap custom gradient) | xla (flax nn.max_pool)
  c.model.batch_norm = "auto"         # auto (fast on CPU, flax elsewhere) | fast | flax
  c.init_from = ""                    # converted pretrained weights (ssfer_jax.tools.convert)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"               # adam | adamw | sgd
  c.optim.lr = 5e-4
  c.optim.weight_decay = 0.0
  c.optim.momentum = 0.9              # sgd
  c.optim.schedule = "constant"       # constant | cosine
  c.optim.warmup_steps = 0
  c.optim.grad_clip = 0.0             # global-norm clip (0: off)
  c.optim.accum_steps = 1             # gradient accumulation micro-steps

  c.loss = ml_collections.ConfigDict()
  c.loss.lambda_x = 1.0

  c.ema = ml_collections.ConfigDict()
  c.ema.decay = 0.999
  c.ema.warmup = True                 # decay = min(decay, (1+t)/(10+t))
  c.ema.student_decay = 0.0           # student params + BN stats *= 1 - this after each EMA update (Ada-CM/DTM: 0.02 * lr)

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 2
  c.train.async_checkpoint = True
  c.train.progress = True             # live progress line on stderr
  c.train.allow_config_change = False # resume a workdir whose config.json differs in hyper-parameters
  c.train.xla_cpu_options = "auto"   # CPU convolution path: auto | default | eigen | {...} (xla_options.py)
  # jax.transfer_guard_device_to_host level of the loop's per-step part (next batch, the
  # step, the on-device metric sums): "disallow" makes a hidden per-step device -> host
  # sync an error (GPU/TPU); "log" reports it; "allow" turns the check off.
  c.train.transfer_guard = "disallow"

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 256
  c.eval.val_fraction = 0.0           # > 0: stratified held-out part of the training set picks the best step

  # Population training (docs/population.md): ``size`` members of the same method, member k
  # with seed ``seed + k`` (initialisation, dropout, data order), trained as one program.
  c.population = ml_collections.ConfigDict()
  c.population.size = 1               # 1: a single run (no member axis)
  c.population.vary_split = False     # member k also draws its labeled split with data.split_seed + k
  c.population.vectorize = "auto"     # vmap (batched) | unroll (a copy per member) | auto (by platform)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.population = 1               # device groups the members are split over (divides population.size)
  c.mesh.fsdp = 1
  c.mesh.num_devices = 0              # 0: every device; n: the first n (tests, debugging)

  c.distributed = ml_collections.ConfigDict()
  c.distributed.mode = "auto"         # auto | explicit | off
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  return c


def set_algorithm(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Switches ``c`` to method ``name`` with that method's default hyper-parameters."""
  c.algorithm = name
  c.algo = algorithms.get_algorithm(name).default_config()
  return c


# The model/data ablation flags, valid for every method. A method's own flags (dta_snl's
# ``no_snl``, ``fixed_threshold``) live in its Algorithm record (``Algorithm.ablations``).
ABLATIONS = {
    "no_attention": algorithms.Ablation({"model.attention": False}),
    "no_feature_dropout": algorithms.Ablation({"model.feature_dropout": 0.0}),
    "no_balance": algorithms.Ablation({"data.class_balanced": False}),
}


def ablation_names() -> list[str]:
  """Every ablation flag: the model/data ones and every registered method's."""
  return sorted(set(ABLATIONS) | set(algorithms.ablations()))


def ablation_effects() -> dict[str, str]:
  """flag -> what it sets (a method's flag names the methods it applies to): ``--list``."""
  out = {flag: a.describe() for flag, a in ABLATIONS.items()}
  for flag, by_method in algorithms.ablations().items():
    out.setdefault(flag, f"{next(iter(by_method.values())).describe()} "
                         f"[{', '.join(by_method)} only]")
  return dict(sorted(out.items()))


def split_variant(arg: str | None):
  """``'no_snl,no_attention,labels=25'`` -> (['no_snl', 'no_attention'], {'labels': '25'}).

  Bare words are flags (ablations or a method name), ``key=value`` pairs are options.
  """
  flags, options = [], {}
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, sep, value = part.partition("=")
    if sep:
      options[key.strip()] = value.strip()
    else:
      flags.append(key)
  return flags, options


def parse_config_arg(arg: str | None, *, source: str, allowed_options=(), extra_flags=(),
                     default_method: str = "dta_snl"):
  """Splits a ``--config=FILE:ARG`` argument (every configs/*.py uses this).

  Returns (method, ablations, extras, options): ``method`` is the one bare word naming a
  registered algorithm (default 'dta_snl'), ``ablations`` the bare words in
  ``ablation_names()`` (applied later by ``apply_ablations``), ``extras`` the bare words in
  ``extra_flags`` (e.g. AffectNet's '7' / '8'), ``options`` the ``key=value`` pairs,
  whose keys must be in ``allowed_options``. Anything else raises naming ``source``.
  """
  flags, options = split_variant(arg)
  methods = [f for f in flags if f in algorithms.names()]
  ablations = [f for f in flags if f in ablation_names()]
  extras = [f for f in flags if f in extra_flags]
  unknown = [f for f in flags if f not in methods + ablations + extras]
  if unknown:
    raise ValueError(f"{source}: unknown variant(s) {unknown}; known: ablations "
                     f"{ablation_names()}, methods {algorithms.names()}"
                     + (f", {list(extra_flags)}" if extra_flags else "")
                     + f", options {list(allowed_options)} as key=value (comma-separated, "
                     f"e.g. --config={source}:no_snl,no_attention)")
  if len(methods) > 1:
    raise ValueError(f"{source}: more than one method in the variant: {methods}")
  bad = sorted(set(options) - set(allowed_options))
  if bad:
    raise ValueError(f"{source}: unknown option(s) {bad}; known: {list(allowed_options)}")
  return (methods[0] if methods else default_method), ablations, extras, options


def apply_ablations(config: ml_collections.ConfigDict, flags, *, source: str):
  """Applies the ablation flags: the model/data ones (``ABLATIONS``) and those of
  ``config.algorithm``'s record; an unknown flag, or another method's, raises naming
  ``source``."""
  own = algorithms.get_algorithm(config.algorithm).ablations
  for flag in flags:
    ablation = ABLATIONS.get(flag) or own.get(flag)
    if ablation is None:
      owners = algorithms.ablations().get(flag)
      if owners:
        raise ValueError(f"{source}: variant {flag!r} applies to {'/'.join(owners)}, not "
                         f"config.algorithm={config.algorithm!r}")
      raise ValueError(f"{source}: unknown variant {flag!r}; known ablations: "
                       f"{', '.join(ablation_names())} (comma-separated, e.g. "
                       f"--config={source}:no_snl,no_attention)")
    for path, value in ablation.settings.items():
      *parents, leaf = path.split(".")
      node = config
      for key in parents:
        node = node[key]
      if leaf not in node:
        raise ValueError(f"{source}: ablation {flag!r} sets config.{path}, which "
                         f"config.algorithm={config.algorithm!r} does not have")
      node[leaf] = value
  return config


def _flat_keys(cfg, prefix=""):
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict) and k not in ("algo", "builder_kwargs"):
      yield from _flat_keys(v, prefix + k + ".")
    else:
      yield prefix + k


# (key, lowest, highest, lowest excluded): numeric values that cannot work outside these
# ranges (a zero interval divides by zero in the loop, a zero batch has no examples, an
# EMA decay above 1 diverges, keep_checkpoints=0 keeps none). None: unbounded.
_RANGES = (
    ("train.num_steps", 1, None, False),
    ("train.log_every", 1, None, False),
    ("train.eval_every", 1, None, False),
    ("train.checkpoint_every", 1, None, False),
    ("train.keep_checkpoints", 1, None, False),
    ("data.batch_size", 1, None, False),
    ("data.uratio", 1, None, False),
    ("data.image_size", 8, None, False),  # this project's floor (no reference states one)
    ("data.crop_pad", 0, None, False),
    ("eval.batch_size", 1, None, False),
    ("optim.lr", 0.0, None, True),
    ("optim.weight_decay", 0.0, None, False),
    ("optim.momentum", 0.0, 1.0, False),
    ("optim.warmup_steps", 0, None, False),
    ("optim.grad_clip", 0.0, None, False),
    ("optim.accum_steps", 1, None, False),
    ("ema.decay", 0.0, 1.0, False),
    ("mesh.fsdp", 1, None, False),
    ("mesh.population", 1, None, False),
    ("population.size", 1, None, False),
    ("mesh.num_devices", 0, None, False),
)


# Keys whose value must be one of a fixed set of strings.
_CHOICES = (
    ("train.transfer_guard", ("allow", "log", "disallow")),
    ("population.vectorize", ("auto", "vmap", "unroll")),
    ("model.max_pool", pooling.IMPLS),
    ("model.batch_norm", batch_norm.IMPLS),
)


def _range_text(lo, hi, lo_open) -> str:
  if hi is None:
    return f"{'>' if lo_open else '>='} {lo}"
  return f"in {'(' if lo_open else '['}{lo}, {hi}]"


def _get(config: ml_collections.ConfigDict, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def check_ranges(config: ml_collections.ConfigDict) -> None:
  """Raises naming the first key of ``_RANGES`` whose value is out of range or not finite,
  or of ``_CHOICES`` whose value is not one of its choices."""
  for key, lo, hi, lo_open in _RANGES:
    node = _get(config, key)
    ok = (isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node)
          and (node > lo if lo_open else node >= lo) and (hi is None or node <= hi))
    if not ok:
      raise ValueError(f"config.{key}={node!r} is out of range: it must be "
                       f"{_range_text(lo, hi, lo_open)}")
  for key, choices in _CHOICES:
    value = _get(config, key)
    if value not in choices:
      raise ValueError(f"config.{key}={value!r} is not valid: use one of "
                       f"{', '.join(repr(c) for c in choices)}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Unknown keys (against ``base_config`` and the method's own defaults) and values
  outside ``_RANGES`` are errors."""
  known = set(_flat_keys(base_config()))
  unknown = sorted(set(_flat_keys(config)) - known)
  if unknown:
    raise ValueError(f"unknown config key(s): {', '.join('config.' + k for k in unknown)}. "
                     "Check the spelling against ssfer_jax/config.py")
  algo = algorithms.get_algorithm(config.algorithm)
  expected = set(algo.default_config().keys())
  got = set(config.algo.keys())
  if got != expected:
    extra, missing = sorted(got - expected), sorted(expected - got)
    raise ValueError(
        f"config.algo does not match config.algorithm={config.algorithm!r}: "
        + (f"unknown key(s) {', '.join('config.algo.' + k for k in extra)}; " if extra else "")
        + (f"missing {', '.join('config.algo.' + k for k in missing)}; " if missing else "")
        + "switch methods with the config variant (e.g. --config=configs/default.py:"
        f"{config.algorithm}), which loads the method's defaults")
  check_ranges(config)
  size, groups = int(config.population.size), int(config.mesh.population)
  if size % groups:
    raise ValueError(f"config.mesh.population={groups} must divide config.population.size="
                     f"{size} (each device group trains size / groups members)")
  if groups > 1 and config.population.vectorize == "unroll":
    raise ValueError("config.population.vectorize='unroll' cannot shard the members over "
                     f"config.mesh.population={groups} device groups; use 'vmap' or 'auto'")


def loader(path: str):
  """The ``get_config(arg)`` of a config file (``configs/*.py``; a relative path that is not
  found from the working directory is tried from the repository root)."""
  path = str(path)
  if not os.path.isfile(path) and not os.path.isabs(path):
    beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), path)
    path = beside if os.path.isfile(beside) else path
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path} not found; pass a configs/*.py file "
                            "(python -m ssfer_jax.main --list shows them)")
  module_spec = importlib.util.spec_from_file_location(
      "ssfer_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"{path} defines no get_config(arg); a config file returns its "
                     "ConfigDict from get_config (see configs/default.py)")
  return module.get_config


def load(spec: str) -> ml_collections.ConfigDict:
  """``"configs/x.py:variant"`` -> the config its ``get_config(variant)`` returns.

  The one config-file loader of the CLIs, bench scripts and tests (``--config=`` flags go
  through ml_collections' own loader, which does the same)."""
  path, _, arg = str(spec).partition(":")
  return loader(path)(arg or None)
