"""Labeled-only baselines: ``supervised`` (the labeled subset) and ``full_supervised``
(every training label; the data layer makes the whole training set the labeled stream)."""

from __future__ import annotations

import ml_collections

from ssfer_jax.algorithms.base import Algorithm, no_state


def default_config():
  return ml_collections.ConfigDict()


SUPERVISED = Algorithm(name="supervised", default_config=default_config, init_state=no_state,
                       unlabeled_loss=None, student_views=(), pseudo_views=(),
                       uses_unlabeled=False)
FULL_SUPERVISED = Algorithm(name="full_supervised", default_config=default_config,
                            init_state=no_state, unlabeled_loss=None, student_views=(),
                            pseudo_views=(), uses_unlabeled=False, uses_all_labels=True)
