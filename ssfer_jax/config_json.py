"""A run's config as it is stored (config.json, a nested dict of JSON values) seen as flat
``dotted.key -> value`` leaves.

Two readers compare or list configs key by key: the resume check (``outputs.resume_conflicts``:
which keys changed between the stored run and the new command line) and TensorBoard's
HPARAMS tab (``metrics``: one column per key). Both use this one rule, so a key is named
the same in an error message and in TensorBoard.
"""

from __future__ import annotations

from typing import Iterator, Mapping


def leaves(d: Mapping, prefix: str = "") -> Iterator[tuple[str, object]]:
  """``(dotted key, value)`` for every leaf of ``d``, depth first in the dict's order. A
  non-empty dict is descended into; an empty one is a leaf (value ``{}``), so that a key
  which is ``{}`` in one config and filled in another shows up as a difference."""
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      yield from leaves(v, f"{prefix}{k}.")
    else:
      yield prefix + k, v
