r"""A PyTorch (eager) implementation of the ssfer_jax dta_snl train step, for benchmarks.

    python bench/parity.py                           # parity with ssfer_jax on one step

Same work as ``ssfer_jax/step.py`` with ``config.algorithm='dta_snl'`` and the RAF-DB
model settings (``configs/rafdb_dta_snl.py``):

* network: torchvision-layout ResNet-18 (7x7/2 stem, 3x3/2 max-pool, BasicBlocks,
  BatchNorm eps 1e-5, momentum 0.1 = flax's 0.9) -> local attention
  ``F * (1 + sigmoid(conv1x1(F)))`` -> random feature-map block dropout (training only,
  per sample with probability p, one ``ceil(0.35 H)`` square, rescaled) -> global
  average pool -> dropout 0.5 -> L2-normalise -> x norm_scale -> linear;
* inputs arrive as uint8 NHWC and are normalised on the device (``/255``, mean, std);
* the EMA teacher (eval-mode BatchNorm) runs on ``[x_ulb_w, x_lb]`` without gradient;
  the student (train mode) on ``[x_lb, x_ulb_s]`` with gradient: one forward each, as
  the JAX step does;
* losses: ``lambda_x CE(lb)`` + DTA (labeled-correct per-class statistic, per-step EMA
  of the thresholds, clip to [min, max], absent classes keep their value, mask with
  the thresholds from before this step's update) ``lambda_u mean(mask CE(strong,
  pseudo))`` + SNL (complementary labels ``p < tau_neg`` except the arg-max, on samples
  failing the mask; ``-mean log(1 - q + eps)``, linear ramp of its weight);
* Adam (torch's ``foreach`` implementation), then the EMA of parameters and BatchNorm
  buffers with Mean Teacher's warm-up ``min(decay, (1 + t) / (10 + t))``.

``mode='supervised'``: the labeled-only step of ``algorithms/supervised.py`` (student
forward/backward, CE, Adam, EMA update: ssfer_jax's step also updates the teacher).

Nothing here synchronises with the host inside a step (no ``.item()``), so on a GPU the
step is asynchronous like the JAX one; ``synchronize()`` waits for it.
"""

from __future__ import annotations

import math

import common  # noqa: F401  (bench/common.py: the repository on sys.path)
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssfer_jax.models.torch_resnet import ResNet18  # the one torch twin of the backbone

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def device() -> torch.device:
  """cuda when available, else cpu."""
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(dev) -> None:
  if dev.type == "cuda":
    torch.cuda.synchronize(dev)


def block_keep_mask(n, h, w, block, gen, dev):
  """(N,1,H,W) bool: False on one random block x block square per sample."""
  top = torch.randint(0, h - block + 1, (n,), generator=gen, device=dev)
  left = torch.randint(0, w - block + 1, (n,), generator=gen, device=dev)
  ys = torch.arange(h, device=dev)[None, :, None]
  xs = torch.arange(w, device=dev)[None, None, :]
  inside = ((ys >= top[:, None, None]) & (ys < top[:, None, None] + block) &
            (xs >= left[:, None, None]) & (xs < left[:, None, None] + block))
  return (~inside)[:, None]


class FERNet(nn.Module):
  """ResNet-18 -> [local attention] -> [feature-map dropout] -> the FER head."""

  def __init__(self, num_classes=7, attention=True, feature_dropout=0.5, block_frac=0.35,
               head_dropout=0.5, norm_scale=16.0):
    super().__init__()
    self.backbone = ResNet18()
    self.attention = attention
    self.attn_conv = nn.Conv2d(512, 1, 1) if attention else None
    self.feature_dropout, self.block_frac = feature_dropout, block_frac
    self.head_dropout, self.norm_scale = head_dropout, norm_scale
    self.fc = nn.Linear(512, num_classes)
    self.gen = None  # torch.Generator for the feature-map dropout (set by the step)

  def forward(self, x):
    f = self.backbone(x)
    if self.attention:
      f = f * (1.0 + torch.sigmoid(self.attn_conv(f)))
    if self.training and self.feature_dropout > 0:
      n, _, h, w = f.shape
      block = max(1, min(h, math.ceil(self.block_frac * h)))
      keep = block_keep_mask(n, h, w, block, self.gen, f.device)
      apply = torch.rand((n, 1, 1, 1), generator=self.gen, device=f.device) < self.feature_dropout
      keep = torch.where(apply, keep, torch.ones_like(keep))
      scale = (h * w) / keep.flatten(1).sum(1).clamp_min(1).float()
      f = f * keep * scale[:, None, None, None]
    pooled = f.mean((2, 3))
    pooled = F.dropout(pooled, self.head_dropout, self.training)
    features = pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return self.fc(self.norm_scale * features)


class TorchStep:
  """One train step of dta_snl (or the supervised baseline) in PyTorch eager.

  ``step(batch)`` takes a dict of numpy arrays as the JAX step does (``x_lb`` uint8 NHWC,
  ``y_lb``; for dta_snl also ``x_ulb_w``, ``x_ulb_s``) and returns the loss tensor
  (not synchronised).
  """

  def __init__(self, mode="dta_snl", *, num_classes=7, attention=True, feature_dropout=0.5,
               head_dropout=0.5, norm_scale=16.0, lr=5e-4, ema_decay=0.999,
               threshold_momentum=0.999, tau_min=0.8, tau_max=0.95, tau_init=0.8,
               lambda_u=1.0, tau_neg=0.05, lambda_neg=1.0, neg_rampup_steps=1000,
               neg_eps=1e-7, channels_last=False, seed=0, dev=None, amp_dtype=None,
               compile=False):
    if mode not in ("dta_snl", "supervised"):
      raise ValueError(f"mode must be 'dta_snl' or 'supervised', got {mode!r}")
    self.mode, self.dev = mode, dev or device()
    torch.manual_seed(seed)
    self.model = FERNet(num_classes, attention, feature_dropout, 0.35, head_dropout,
                        norm_scale).to(self.dev)
    self.model.gen = torch.Generator(device=self.dev).manual_seed(seed)
    self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    self.model.to(memory_format=self.memory_format)
    self.teacher = FERNet(num_classes, attention, feature_dropout, 0.35, head_dropout,
                          norm_scale).to(self.dev).to(memory_format=self.memory_format)
    self.teacher.load_state_dict(self.model.state_dict())
    self.teacher.eval()
    for p in self.teacher.parameters():
      p.requires_grad_(False)
    self.opt = torch.optim.Adam(self.model.parameters(), lr=lr, foreach=True)
    self.ema_decay = ema_decay
    self.num_classes = num_classes
    self.h = dict(m=threshold_momentum, tau_min=tau_min, tau_max=tau_max, lambda_u=lambda_u,
                  tau_neg=tau_neg, lambda_neg=lambda_neg, rampup=neg_rampup_steps, eps=neg_eps)
    self.tau = torch.full((num_classes,), tau_init, device=self.dev)
    self.mean = torch.tensor(MEAN, device=self.dev).view(1, 3, 1, 1)
    self.std = torch.tensor(STD, device=self.dev).view(1, 3, 1, 1)
    self.t = 0
    self._ema_pairs()
    # bench/gpu_bench.py: bfloat16 autocast (as config.model.compute_dtype='bfloat16': the
    # parameters stay float32) and torch.compile of the two networks' forward passes.
    self.amp_dtype = amp_dtype
    self.student_fwd = torch.compile(self.model) if compile else self.model
    self.teacher_fwd = torch.compile(self.teacher) if compile else self.teacher

  def _ema_pairs(self):
    s_params = dict(self.model.named_parameters())
    s_bufs = dict(self.model.named_buffers())
    self.ema_dst, self.ema_src = [], []
    for name, p in self.teacher.named_parameters():
      self.ema_dst.append(p)
      self.ema_src.append(s_params[name])
    for name, b in self.teacher.named_buffers():
      if b.dtype.is_floating_point:  # running_mean / running_var, not num_batches_tracked
        self.ema_dst.append(b)
        self.ema_src.append(s_bufs[name])

  def to_device(self, x_uint8_nhwc):
    """numpy uint8 NHWC -> float NCHW (channels_last strides if asked), normalised."""
    x = torch.from_numpy(np.asarray(x_uint8_nhwc)).to(self.dev, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - self.mean) / self.std
    return x.contiguous(memory_format=self.memory_format)

  def step(self, batch):
    if self.amp_dtype is None:
      return self._step(batch)
    with torch.autocast(self.dev.type, dtype=self.amp_dtype):
      return self._step(batch)

  def _step(self, batch):
    y_lb = torch.from_numpy(np.asarray(batch["y_lb"], np.int64)).to(self.dev)
    x_lb = self.to_device(batch["x_lb"])
    b = x_lb.shape[0]
    if self.mode == "supervised":
      self.model.train()
      loss = F.cross_entropy(self.student_fwd(x_lb), y_lb)
    else:
      x_w = self.to_device(batch["x_ulb_w"])
      x_s = self.to_device(batch["x_ulb_s"])
      u = x_w.shape[0]
      with torch.no_grad():
        t_logits = self.teacher_fwd(torch.cat([x_w, x_lb]))
      t_w, t_lb = t_logits[:u], t_logits[u:]
      self.model.train()
      logits = self.student_fwd(torch.cat([x_lb, x_s]))
      logits_lb, logits_s = logits[:b], logits[b:]
      loss_x = F.cross_entropy(logits_lb, y_lb)
      loss = loss_x + self._unlabeled_loss(t_w, t_lb, y_lb, logits_s)
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    self.opt.step()
    decay = min(self.ema_decay, (1.0 + self.t) / (10.0 + self.t))
    with torch.no_grad():
      torch._foreach_lerp_(self.ema_dst, self.ema_src, 1.0 - decay)
    self.t += 1
    return loss.detach()

  def _unlabeled_loss(self, t_w, t_lb, y_lb, logits_s):
    h, c = self.h, self.num_classes
    with torch.no_grad():
      probs = torch.softmax(t_w.float(), -1)
      conf, pseudo = probs.max(-1)
      # DTA, labeled-correct statistic, per-step EMA; mask with the thresholds before it.
      p_lb = torch.softmax(t_lb.float(), -1)
      c_lb, a_lb = p_lb.max(-1)
      onehot = F.one_hot(y_lb, c).float() * (a_lb == y_lb).float()[:, None]
      total, count = onehot.T @ c_lb, onehot.sum(0)
      mean = torch.where(count > 0, total / count.clamp_min(1.0), torch.zeros_like(total))
      new = (h["m"] * self.tau + (1 - h["m"]) * mean).clamp(h["tau_min"], h["tau_max"])
      tau_used = self.tau
      self.tau = torch.where(count > 0, new, self.tau)
      mask = (conf >= tau_used[pseudo]).float()
      top = F.one_hot(pseudo, c).bool()
      comp = ((probs < h["tau_neg"]) & ~top).float()
      selected = (1.0 - mask) * (comp.sum(-1) > 0).float()
    loss_u = h["lambda_u"] * (mask * F.cross_entropy(logits_s, pseudo, reduction="none")).mean()
    q = torch.softmax(logits_s.float(), -1)
    per_class = -torch.log(1.0 - q + h["eps"])
    per_sample = (comp * per_class).sum(-1) / comp.sum(-1).clamp_min(1.0)
    loss_neg = (selected * per_sample).sum() / selected.sum().clamp_min(1.0)
    ramp = min(1.0, self.t / h["rampup"]) if h["rampup"] > 0 else 1.0
    return loss_u + h["lambda_neg"] * ramp * loss_neg


# ---------------------------------------------------------------------------------------
# Parity with ssfer_jax: same weights, dropout off, one step -> same losses and thresholds.

def torch_to_flax_variables(step: TorchStep, template_params, template_stats):
  """The torch student's weights in ssfer_jax's FERNet variable layout."""
  from ssfer_jax.tools import convert
  sd = {k[len("backbone."):]: v.detach().cpu().numpy()
        for k, v in step.model.state_dict().items() if k.startswith("backbone.")}
  params, stats, _ = convert.convert_state_dict(sd, "resnet18")
  out_p = dict(template_params)
  out_p["backbone"] = params
  out_p["fc"] = {"kernel": step.model.fc.weight.detach().cpu().numpy().T,
                 "bias": step.model.fc.bias.detach().cpu().numpy()}
  if step.model.attention:
    w = step.model.attn_conv.weight.detach().cpu().numpy()           # (1, 512, 1, 1)
    bias = step.model.attn_conv.bias.detach().cpu().numpy()
    out_p["local_attention"] = {"attn_conv": {"kernel": np.transpose(w, (2, 3, 1, 0)),
                                              "bias": bias}}
  out_s = dict(template_stats)
  out_s["backbone"] = stats
  return out_p, out_s
