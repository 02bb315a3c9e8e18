"""DTM, the authors' 2023 Dynamic Threshold Module (SPEC §2; CZP-1/SSL-DTM ``train_dtm.py``).

The DTA machinery of ``dta_snl.py`` (same loss function, state and hyper-parameter keys)
with the 2023 settings: labeled-correct statistics, an EMA with m = 0.9 applied once per
epoch, floor 0.8, the reset rule (SPEC §2.1), no SNL; pseudo-labels and their confidence
from the mean of the softmaxes of two weak views (``base.two_view_confidence``), and the
loss ``L_x + 0.5 L_u``. ``configs/reference/dtm.py`` adds the rest of the reference recipe
(student pseudo-labels, EMA-teacher threshold statistics, the EMA's weight decay). See the
``dta_snl.py`` docstring for the rule itself.
"""

from __future__ import annotations

import ml_collections

from ssfer_jax.algorithms import dta_snl
from ssfer_jax.algorithms.base import Algorithm


def default_config() -> ml_collections.ConfigDict:
  """DTM (2023): m = 0.9 once per epoch, floor 0.8, labeled-correct statistics, reset rule,
  no ceiling below 1, no SNL, two weak views, ``L_x + 0.5 L_u``. Same keys as ``dta_snl``
  (it is the same machinery)."""
  c = dta_snl.default_config()
  c.pseudo_from_two_views = True
  c.lambda_u = 0.5
  c.threshold_source = "labeled_correct"
  c.threshold_cadence = "epoch"
  c.threshold_momentum = 0.9
  c.threshold_min = 0.8
  c.threshold_max = 1.0
  c.threshold_init = 0.8
  c.threshold_dtm_reset = True
  c.threshold_reset_value = 0.8
  c.use_snl = False
  return c


DTM = Algorithm(name="dtm", default_config=default_config, init_state=dta_snl.init_state,
                unlabeled_loss=dta_snl.unlabeled_loss, pseudo_views=dta_snl.pseudo_views,
                needs_teacher_on_labeled=dta_snl.needs_teacher_on_labeled,
                ablations=dta_snl.ABLATIONS)
