"""TFDS builders for the real facial-expression datasets (importing registers them).

config.dataset.name -> (TFDS builder name, builder config):

  rafdb        ssfer_rafdb              RAF-DB basic              (rafdb.py)
  affectnet7   ssfer_affectnet/7        AffectNet, 7 classes      (affectnet.py)
  affectnet8   ssfer_affectnet/8        AffectNet, 8 classes
  fer2013      ssfer_fer2013            FER2013                   (fer2013.py)
  ferplus      ssfer_ferplus/8 or /7    FERPlus majority vote     (ferplus.py; builder_kwargs.num_classes)
  sfew         ssfer_sfew               SFEW 2.0                  (sfew.py)
  image_folder ssfer_image_folder       class folders             (generic.py)
  csv_list     ssfer_csv_list           path,label lists          (generic.py)

All write ArrayRecord, need no TensorFlow, and are prepared with
``python -m ssfer_jax.data.prepare``. See ``common.py`` for the bad-input options.
"""

from ssfer_jax.data.builders.affectnet import SsferAffectnet
from ssfer_jax.data.builders.common import BadInputError
from ssfer_jax.data.builders.fer2013 import SsferFer2013
from ssfer_jax.data.builders.ferplus import SsferFerplus
from ssfer_jax.data.builders.generic import SsferCsvList, SsferImageFolder
from ssfer_jax.data.builders.rafdb import SsferRafdb
from ssfer_jax.data.builders.sfew import SsferSfew

BUILDERS = {
    "rafdb": (SsferRafdb, None),
    "affectnet7": (SsferAffectnet, "7"),
    "affectnet8": (SsferAffectnet, "8"),
    "fer2013": (SsferFer2013, None),
    "ferplus": (SsferFerplus, "8"),
    "sfew": (SsferSfew, None),
    "image_folder": (SsferImageFolder, None),
    "csv_list": (SsferCsvList, None),
}

# Builder options that only matter when preparing (never when reading).
PREPARE_OPTIONS = ("skip_bad_images", "skip_bad_rows", "allow_empty_classes", "vote")


def builder_for(dataset: str, *, data_dir, num_classes: int | None = None, **options):
  """The builder of config.dataset.name ``dataset`` (``num_classes`` picks FERPlus 7/8)."""
  if dataset not in BUILDERS:
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(BUILDERS)} "
                     "(or 'synthetic')")
  cls, config = BUILDERS[dataset]
  if dataset == "ferplus" and num_classes:
    if int(num_classes) not in (7, 8):
      raise ValueError(f"ferplus num_classes must be 7 or 8, got {num_classes}")
    config = str(int(num_classes))
  if "vote" in options and cls is not SsferFerplus:
    raise ValueError(f"option 'vote' only applies to ferplus, not {dataset}")
  kwargs = {"config": config} if config else {}
  return cls(data_dir=str(data_dir), **kwargs, **options)


__all__ = ["BUILDERS", "BadInputError", "builder_for", "PREPARE_OPTIONS"]
