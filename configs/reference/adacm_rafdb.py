"""Ada-CM on RAF-DB as the authors' code trains it (hangyu94/Ada-CM ``main.py``).

    python -m ssfer_jax.main --config=configs/reference/adacm_rafdb.py --workdir=runs/adacm_ref \\
        --config.dataset.data_dir=/data/tfds --config.init_from=/ckpt/resnet18_msceleb
    ... --config=configs/reference/adacm_rafdb.py:labels=1000,epochs=20

The recipe (``ssfer_jax/presets.py``): batch 16 + 16, 224 px, ResNet-18 head without
scale, Adam 5e-4, EMA 0.999 without warm-up and with the reference's weight decay inside
the EMA step, student pseudo-labels from two weak views, EMA-teacher thresholds per
800-step epoch, ``0.5 L_x + L_u + 0.1 L_con``, 20 x 800 iterations, best test accuracy
over epochs.

Remaining differences from the reference code (each one a limit of this framework or a
choice stated here, not an accident):

1. Label split: the reference's ``data_split`` hard-codes 250 fear labels and
   (N - 250) / 6 per other class, so only N = 4000 gives the published counts (for
   N < 4000 it takes almost a whole class, SPEC §2.2); here the published table
   (fear 10/40/100/200/250) is used, and the ids are drawn by this project's seeded
   generator, not ``np.random.seed(5)`` + ``np.random.shuffle``.
2. Thresholds: the reference re-runs the EMA model over the labeled loader (train-mode
   augmentations) *after* each epoch; here the EMA teacher's confidences on each labeled
   batch are accumulated *during* the epoch (same rule, same model family, an epoch-long
   mix of teachers instead of the final one).
3. BatchNorm: the reference calls the student four times per step (weak 1, weak 2,
   labeled, strong), so each view is normalised with its own batch statistics and the
   running statistics move four times; here one concatenated forward pass normalises
   all views together and moves them once.
4. Dropout: one dropout key for the concatenated pass instead of four independent calls.
5. Weak view: the reference applies the padded crop with probability 0.5 and pads with
   zeros (torchvision ``RandomCrop(padding=8)``); here every weak view is cropped after
   reflect-padding. Strong view: the reference applies RandAugment + Cutout *before*
   resize/crop/flip, here after the weak transform; Cutout's fill is grey in both.
6. Colour order: the reference reads images with ``cv2.imread`` (BGR) and never converts
   them, while normalising with RGB ImageNet statistics; here images are RGB.
7. Pretrained weights: MS-Celeb-1M ResNet-18 must be converted and passed with
   ``--config.init_from`` (``python -m ssfer_jax.tools.convert``); without it the network
   starts from scratch (the reference loads them unconditionally).
8. Data order: grain's seeded shuffles and ``drop_remainder`` batches, not torch's
   ``DataLoader(shuffle=True, drop_last=True)`` restarted each epoch.
9. Test-time: the reference evaluates at batch 64 and reports the best epoch's top-1; the
   summary reports that (``teacher.best_top1``, selected on the test set) and the final
   value; ``--config.eval.val_fraction`` adds an honest held-out selection.
"""

from ssfer_jax.presets import reference_config

SOURCE = "configs/reference/adacm_rafdb.py"


def get_config(arg=None):
  c = reference_config(arg, source=SOURCE, method="adacm")
  c.algo.lambda_u = 1.0       # 0.5 Lx (labeled_supervision_weight) + Lu + 0.1 Lcon
  c.algo.lambda_con = 0.1
  return c
