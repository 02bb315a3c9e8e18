"""The training recipe shared by the Ada-CM and SSL-DTM reference code (``main.py`` /
``train_dtm.py``), as far as this framework can express it. Used by ``configs/reference/*.py``.

What both reference scripts do, and the key that encodes it:

* labeled and unlabeled loaders of ``--batch-size`` 16 each (``data.batch_size = 16``,
  ``data.uratio = 1``), plain shuffling (``data.class_balanced = False``), the unlabeled
  set = the training set minus the labeled ids;
* ``Resize(224)`` (``data.image_size = 224``), ImageNet mean/std, weak view = random crop
  with 8-pixel padding + horizontal flip (``data.crop_pad = 8``), strong view = RandAugment
  with 3 ops at random magnitudes + Cutout up to 0.5 (``randaugment_n = 3``, ``cutout = 0.5``);
* ResNet-18 (Ada-CM: MS-Celeb-1M weights, ``--config.init_from=...``), head = average pool
  -> dropout 0.5 -> L2-normalise -> linear, no scale (``model.norm_scale = 1.0``), no local
  attention, no feature-map dropout;
* ``optim.Adam(lr=5e-4)``, constant rate, no weight decay in the optimizer;
* ``WeightEMA(alpha=0.999)``: the teacher is an EMA with a constant decay from step 0
  (``ema.warmup = False``), and after every EMA update the student's parameters and
  BatchNorm statistics are multiplied by ``1 - 0.02 * lr`` (``ema.student_decay = 1e-5``);
* pseudo-labels from the *student* (train mode) on the two weak views
  (``pseudo_label_source = 'student'``), thresholds from the EMA model's confidences on the
  labeled set (``threshold_stats_source = 'teacher'``), updated every "epoch" of
  ``--train-iteration`` = 800 steps (``algo.epoch_steps = 800``);
* 20 epochs of 800 iterations, the EMA model evaluated on the test set after every epoch,
  and the best test accuracy over epochs reported (``train.eval_every = 800``;
  ``summary.json`` ``teacher.best_top1``, ``best_selected_on: "test"``).
"""

from __future__ import annotations

from ssfer_jax.config import base_config, parse_config_arg, set_algorithm

ITERATIONS = 800  # --train-iteration: the reference's "epoch"


def fer_recipe(c, *, image_size: int, source: str):
  """The FER lineage's training recipe (SPEC §1.4: Ada-CM / DTM code) shared by the real-data
  configs: ResNet-18 at 112 or 224 px with ImageNet normalisation, class-balanced labeled
  batches of 32 with 3 unlabeled images per labeled one, random crop with 8-pixel padding,
  head dropout 0.5, local attention and feature-map dropout on, Adam 5e-4, EMA 0.999."""
  if image_size not in (112, 224):
    raise ValueError(f"{source}: size={image_size}; use size=112 or size=224")
  c.data.image_size = image_size
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.class_balanced = True
  c.data.batch_size = 32
  c.data.uratio = 3
  c.data.crop_pad = 8
  c.model.backbone = "resnet18"
  c.model.head_dropout = 0.5
  c.model.attention = True
  c.model.feature_dropout = 0.5
  c.optim.name = "adam"
  c.optim.lr = 5e-4
  c.ema.decay = 0.999
  c.train.log_every = 100
  return c


def reference_config(arg, *, source: str, method: str, epochs: int = 20):
  """The shared recipe for ``method``; variant options ``labels=N`` (Ada-CM total, default
  4000), ``epochs=N`` and ``size=112|224``."""
  chosen, ablations, _, opts = parse_config_arg(arg, source=source, default_method=method,
                                                allowed_options=("labels", "epochs", "size"))
  if ablations or chosen != method:
    raise ValueError(f"{source}: a reference preset reproduces {method} only and takes no "
                     f"ablation or method variant ({ablations or chosen}); use "
                     "configs/rafdb_dta_snl.py:<method>,<ablations> for those")
  c = base_config()
  set_algorithm(c, method)
  c.seed = 5                       # --manualSeed (the draws themselves differ from torch's)
  c.dataset.name = "rafdb"
  c.data.label_protocol = "adacm"
  c.data.num_labels = int(opts.get("labels", 4000))
  c.data.split_seed = 5
  # The lineage's shared part (ImageNet statistics, crop padding 8, ResNet-18, head dropout
  # 0.5, Adam 5e-4, EMA 0.999), then what these two scripts do differently from it.
  fer_recipe(c, image_size=int(opts.get("size", 224)), source=source)
  c.data.batch_size = 16
  c.data.uratio = 1
  c.data.class_balanced = False
  c.data.randaugment_n = 3
  c.data.cutout = 0.5
  c.model.norm_scale = 1.0
  c.model.attention = False
  c.model.feature_dropout = 0.0
  c.optim.weight_decay = 0.0
  c.optim.schedule = "constant"
  c.ema.warmup = False
  c.ema.student_decay = 0.02 * c.optim.lr   # WeightEMA: wd = 0.02 * args.lr
  c.pseudo_label_source = "student"
  c.threshold_stats_source = "teacher"
  c.algo.epoch_steps = ITERATIONS
  c.train.num_steps = int(opts.get("epochs", epochs)) * ITERATIONS
  c.train.eval_every = ITERATIONS
  c.train.checkpoint_every = ITERATIONS
  return c
