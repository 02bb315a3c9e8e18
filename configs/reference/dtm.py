"""DTM (the authors' 2023 Dynamic Threshold Module, CZP-1/SSL-DTM ``train_dtm.py``) on
RAF-DB, with that script's training step and Ada-CM's RAF-DB recipe around it.

    python -m ssfer_jax.main --config=configs/reference/dtm.py --workdir=runs/dtm_ref \\
        --config.dataset.data_dir=/data/tfds [--config.init_from=/ckpt/resnet18_msceleb]

From ``train_dtm.py``: student pseudo-labels from the mean softmax of two weak views,
per-class thresholds ``tau_c <- 0.9 tau_c + 0.1 mu_c`` once per 800-step epoch from the EMA
model's confidences on correctly classified labeled samples, reset to 0.8 when ``mu_c <
0.8`` or the class has none, mask ``p >= tau``, loss ``L_x + 0.5 L_u``, Adam 5e-4 constant
(its MultiStepLR runs only with ``--sc``), EMA 0.999 with the weight decay inside the EMA
step, 224 px. The rest of the recipe is ``ssfer_jax/presets.py`` (Ada-CM's RAF-DB
setting).

Remaining differences from the reference code:

1. Dataset and scale: ``train_dtm.py`` was written for Aff-Wild2 (8 classes; csv lists)
   with an EfficientNet-B7 (its ``create_model`` builds nothing else), argparse defaults
   batch 4, 30 epochs, 800 iterations, and the published run (``train_dtm.sh``) batch 30,
   100 epochs, 1000 iterations. This preset runs DTM on RAF-DB with Ada-CM's batch
   16 + 16, 20 x 800 iterations and ResNet-18: the method is the script's, the scale is
   the RAF-DB lineage's (``epochs=N`` / ``--config.data.batch_size`` to change it).
2. Head: the script L2-normalises the EfficientNet features and applies timm's linear
   classifier without dropout; here the ResNet-18 head has dropout 0.5 like Ada-CM's
   (``--config.model.head_dropout=0`` for the script's).
3. Thresholds are accumulated during the epoch rather than recomputed after it; BatchNorm
   sees one concatenated pass instead of four calls; the weak view always crops with
   reflect padding; images are RGB (the script reads csv image paths with its own loader);
   the label split is this project's seeded Ada-CM table — as items 1-8 of
   ``configs/reference/adacm_rafdb.py``.
4. Reporting: the script also keeps a best-macro-F1 checkpoint; the summary reports best and
   final top-1, mean per-class accuracy and macro-F1 (``summary.json``).
"""

from ssfer_jax.presets import reference_config

SOURCE = "configs/reference/dtm.py"


def get_config(arg=None):
  # dtm's own defaults already are the script's: two weak views, lambda_u = 0.5, m = 0.9
  # per epoch, floor / reset 0.8, no SNL.
  return reference_config(arg, source=SOURCE, method="dtm")
