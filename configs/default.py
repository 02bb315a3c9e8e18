"""Default job: the built-in synthetic faces, small CNN, 40 px, CPU-friendly (minutes).

    python -m ssfer_jax.main --config=configs/default.py --workdir=runs/default
    python -m ssfer_jax.main --config=configs/default.py:supervised --workdir=runs/sup
    python -m ssfer_jax.main --config=configs/default.py:fixmatch,labels=25 --workdir=runs/fm25

Variant (after ':', comma-separated): a method name (default ``fixmatch``; any of
``ssfer_jax.algorithms.names()``), ablation flags (``config.ablation_names()``: the
model/data ones and each method's), ``labels=N`` (labels per class) and ``steps=N``. Method
hyper-parameters keep their published defaults here; ``configs/default_dta_snl.py`` is the
method's own tuned setup.
"""

from ssfer_jax.config import apply_ablations, base_config, parse_config_arg, set_algorithm

SOURCE = "configs/default.py"


def get_config(arg=None):
  method, ablations, _, opts = parse_config_arg(arg, source=SOURCE, default_method="fixmatch",
                                                allowed_options=("labels", "steps"))
  c = base_config()
  set_algorithm(c, method)
  c.model.head_dropout = 0.0  # small CNN on 40 px: no head dropout (the FER configs keep 0.5)
  c.train.num_steps = 3000
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.data.labels_per_class = int(opts.get("labels", c.data.labels_per_class))
  c.train.num_steps = int(opts.get("steps", c.train.num_steps))
  return apply_ablations(c, ablations, source=SOURCE)
