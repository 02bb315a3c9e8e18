"""DTA + SNL on RAF-DB (basic, 7 classes): ResNet-18, 112 px, Adam 5e-4, EMA teacher 0.999,
class-balanced labeled sampling, local attention + feature-map dropout (SPEC §1).

    python -m ssfer_jax.data.prepare --dataset=rafdb --manual_dir=/data/RAF-DB/basic --data_dir=/data/tfds
    python -m ssfer_jax.main --config=configs/rafdb_dta_snl.py --workdir=runs/rafdb \\
        --config.dataset.data_dir=/data/tfds [--config.init_from=/ckpt/resnet18_msceleb]
    python -m ssfer_jax.main --config=configs/rafdb_dta_snl.py:no_snl,no_attention,labels=1000 ...

Variant arguments (after ':', comma-separated, combinable):

  fixed_threshold     DTA off: one fixed threshold (config.algo.fixed_tau, 0.95) for every class
  no_snl              Selective Negative Learning off
  no_attention        local attention enhancement off (config.model.attention=False)
  no_feature_dropout  random feature-map dropout off (config.model.feature_dropout=0)
  no_balance          uniform instead of class-balanced labeled sampling
  dtm | fixmatch | ... another registered method with the same data/model settings
  labels=N            Ada-CM RAF-DB label budget N in {100, 400, 1000, 2000, 4000} (default 4000;
                      fear under-sampled, SPEC §3)
  size=112|224        input side in pixels (default 112)
  steps=N             optimizer steps (default 20000)
"""

from ssfer_jax.config import apply_ablations, base_config, parse_config_arg, set_algorithm
from ssfer_jax.presets import fer_recipe

SOURCE = "configs/rafdb_dta_snl.py"


def get_config(arg=None):
  method, ablations, _, opts = parse_config_arg(arg, source=SOURCE,
                                                allowed_options=("labels", "size", "steps"))
  c = base_config()
  set_algorithm(c, method)
  c.dataset.name = "rafdb"

  fer_recipe(c, image_size=int(opts.get("size", 112)), source=SOURCE)
  c.data.label_protocol = "adacm"
  c.data.num_labels = int(opts.get("labels", 4000))

  c.train.num_steps = int(opts.get("steps", 20000))
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  return apply_ablations(c, ablations, source=SOURCE)
