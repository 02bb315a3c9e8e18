"""Default job: the built-in synthetic faces, small CNN, 48 px, CPU-friendly (minutes).

    python -m ssfer_jax.main --config=configs/default.py --workdir=runs/default
    python -m ssfer_jax.main --config=configs/default.py:supervised --workdir=runs/sup
    python -m ssfer_jax.main --config=configs/default.py:fixmatch,labels=25 --workdir=runs/fm25

Variant arguments (after ':', comma-separated): a method name, ``labels=N`` (labels per
class), ``steps=N``.
"""

from ssfer_jax.config import base_config, parse_variant, set_algorithm


def get_config(arg=None):
  variant = parse_variant(arg)
  c = base_config()
  set_algorithm(c, variant.get("method", "fixmatch"))
  c.data.labels_per_class = int(variant.get("labels", 10))
  c.train.num_steps = int(variant.get("steps", c.train.num_steps))
  return c
