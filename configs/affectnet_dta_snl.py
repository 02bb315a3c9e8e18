"""DTA + SNL on AffectNet (manually annotated; 7 or 8 classes): ResNet-18, 112 px, Adam 5e-4,
EMA teacher 0.999, class-balanced labeled sampling (train is imbalanced), local attention
+ feature-map dropout (SPEC §1). The balanced validation set is the test set; report mean
per-class accuracy as well as accuracy.

    python -m ssfer_jax.data.prepare --dataset=affectnet8 --manual_dir=/data/AffectNet --data_dir=/data/tfds
    python -m ssfer_jax.main --config=configs/affectnet_dta_snl.py:8 --workdir=runs/affectnet8 \\
        --config.dataset.data_dir=/data/tfds
    python -m ssfer_jax.main --config=configs/affectnet_dta_snl.py:7,no_snl,labels=100 ...

Variant arguments (after ':', comma-separated, combinable):

  7 | 8               affectnet7 (codes 0-6) or affectnet8 (with contempt); default 7
  fixed_threshold     DTA off: one fixed threshold (config.algo.fixed_tau, 0.95) for every class
  no_snl              Selective Negative Learning off
  no_attention        local attention enhancement off (config.model.attention=False)
  no_feature_dropout  random feature-map dropout off (config.model.feature_dropout=0)
  no_balance          uniform instead of class-balanced labeled sampling
  dtm | fixmatch | ... another registered method with the same data/model settings
  labels=N            labels per class (default 250: 2,000 labels in all with 8 classes,
                      1,750 with 7; 10/25/100/250 is the FixMatch protocol of SPEC §3)
  size=112|224        input side in pixels (default 112)
  steps=N             optimizer steps (default 30000)
"""

from ssfer_jax.config import apply_ablations, base_config, parse_config_arg, set_algorithm
from ssfer_jax.presets import fer_recipe

SOURCE = "configs/affectnet_dta_snl.py"


def get_config(arg=None):
  method, ablations, extras, opts = parse_config_arg(
      arg, source=SOURCE, allowed_options=("labels", "size", "steps"), extra_flags=("7", "8"))
  if len(extras) > 1:
    raise ValueError(f"{SOURCE}: choose one of the variants 7 or 8, got {extras}")
  num_classes = extras[0] if extras else "7"
  c = base_config()
  set_algorithm(c, method)
  c.dataset.name = "affectnet" + num_classes

  fer_recipe(c, image_size=int(opts.get("size", 112)), source=SOURCE)
  c.data.label_protocol = "uniform"
  c.data.labels_per_class = int(opts.get("labels", 250))

  c.train.num_steps = int(opts.get("steps", 30000))
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return apply_ablations(c, ablations, source=SOURCE)
