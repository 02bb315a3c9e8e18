"""PyTorch ResNet -> Flax conversion (ssfer_jax.tools.convert) and loading
(ssfer_jax.models.pretrained)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssfer_jax.models import pretrained
from ssfer_jax.tools import convert
from ssfer_jax.config import base_config
from ssfer_jax.models import build_model
from ssfer_jax.models.resnet import ResNet18

torch = pytest.importorskip("torch")
tnn = torch.nn

from ssfer_jax.models.torch_resnet import ResNet18 as TorchResNet18  # noqa: E402  (needs torch)


@pytest.fixture(scope="module")
def torch_net():
  torch.manual_seed(0)
  net = TorchResNet18(num_classes=1000)
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, tnn.BatchNorm2d):  # non-trivial affine and running statistics
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.num_batches_tracked.fill_(7)
  return net.eval()


@pytest.fixture(scope="module")
def image():
  return np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)  # NHWC


def _torch_features(net, x_nhwc):
  with torch.no_grad():
    out = net.features(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2))
  return out.permute(0, 2, 3, 1).numpy()


def _assert_close(got, want, tol=1e-4):
  err = float(np.max(np.abs(np.asarray(got) - want)))
  print(f"max abs difference {err:.3g}, reference max {np.abs(want).max():.3g}")
  assert err <= tol, f"max abs difference {err:.3g} > {tol} (scale {np.abs(want).max():.3g})"


def test_backbone_matches_torch(torch_net, image):
  params, stats, report = convert.convert_state_dict(
      {k: v.numpy() for k, v in torch_net.state_dict().items()}, "resnet18")
  assert report["ignored_keys"] == sorted(
      ["fc.bias", "fc.weight"] + [k for k in torch_net.state_dict() if "num_batches_tracked" in k])
  got = jax.jit(lambda v, x: ResNet18().apply(v, x, train=False))(
      {"params": params, "batch_stats": stats}, image)
  want = _torch_features(torch_net, image)
  assert got.shape == want.shape == (2, 2, 2, 512)
  assert np.abs(want).max() > 0.1  # the comparison is not between near-zero maps
  _assert_close(got, want)


def test_wrapped_checkpoint_to_fernet_logits(torch_net, image, tmp_path):
  """A {'state_dict': {'module.'...}} file with extra entries -> CLI -> load_into -> same logits."""
  wrapped = {"epoch": 3, "arch": "resnet18",
             "state_dict": {"module." + k: v for k, v in torch_net.state_dict().items()}}
  src = tmp_path / "model.pth"
  torch.save(wrapped, src)
  out = tmp_path / "converted"
  assert convert.main([f"--input={src}", f"--output={out}", "--arch=resnet18"]) == 0
  _, _, meta = pretrained.read(out)
  n_tensors = sum(1 for k in torch_net.state_dict()
                  if not k.startswith("fc.") and "num_batches_tracked" not in k)
  assert meta["arch"] == "resnet18" and meta["num_converted"] == n_tensors == 100

  cfg = base_config().model
  cfg.backbone = "resnet18"
  model = build_model(cfg, 7)
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                            jnp.zeros((1, 64, 64, 3)), train=False))
  rng = np.random.default_rng(2)  # random values everywhere (no init compile); fc stays random
  variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
  before_fc = variables["params"]["fc"]
  params, stats = pretrained.load_into(variables["params"], variables["batch_stats"], out)
  assert params["fc"]["kernel"] is before_fc["kernel"]  # only the backbone subtree is replaced
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])(
      {"params": params, "batch_stats": stats}, image)

  feats = _torch_features(torch_net, image).mean(axis=(1, 2))
  feats = feats / np.linalg.norm(feats, axis=-1, keepdims=True)
  feats = getattr(model, "norm_scale", 1.0) * feats  # the head's embedding scale
  want = feats @ np.asarray(params["fc"]["kernel"]) + np.asarray(params["fc"]["bias"])
  _assert_close(logits, want)


def test_without_fc_and_with_prefix(torch_net):
  sd = {"encoder." + k: v.numpy() for k, v in torch_net.state_dict().items()
        if not k.startswith("fc.")}
  params, _, report = convert.convert_state_dict(convert.extract_state_dict(sd), "resnet18")
  assert not any(k.startswith("fc") for k in report["ignored_keys"])
  np.testing.assert_array_equal(params["layer3_0"]["downsample_conv"]["kernel"],
                                sd["encoder.layer3.0.downsample.0.weight"].transpose(2, 3, 1, 0))


def test_wrong_arch_names_keys_and_guess(torch_net):
  sd = {k: v.numpy() for k, v in torch_net.state_dict().items()}
  with pytest.raises(ValueError) as e:
    convert.convert_state_dict(sd, "resnet50", source="r18.pth")
  msg = str(e.value)
  assert "r18.pth" in msg and "--arch=resnet50" in msg
  assert "missing keys" in msg and "layer1.0.conv3.weight" in msg
  assert "shape mismatches" in msg and "layer1.0.conv1.weight: checkpoint (64, 64, 3, 3)" in msg
  assert "resnet18 (BasicBlock blocks (2, 2, 2, 2))" in msg


def test_missing_and_extra_keys(torch_net):
  sd = {k: v.numpy() for k, v in torch_net.state_dict().items()}
  del sd["layer4.1.bn2.running_var"]
  with pytest.raises(ValueError, match=r"missing keys \(1\): layer4\.1\.bn2\.running_var"):
    convert.convert_state_dict(sd, "resnet18")
  sd = {k: v.numpy() for k, v in torch_net.state_dict().items()}
  sd["projector.weight"] = np.zeros((4, 4), np.float32)
  with pytest.raises(ValueError, match=r"unexpected keys \(1\): projector\.weight.*--allow_extra"):
    convert.convert_state_dict(sd, "resnet18")
  _, _, report = convert.convert_state_dict(sd, "resnet18", allow_extra=True)
  assert "projector.weight" in report["ignored_keys"]


def test_load_into_wrong_model_and_bad_files(torch_net, tmp_path):
  params, stats, _ = convert.convert_state_dict(
      {k: v.numpy() for k, v in torch_net.state_dict().items()}, "resnet18")
  pretrained.write(tmp_path / "r18", params, stats, {"arch": "resnet18"})
  cfg = base_config().model  # small_cnn backbone
  variables = jax.eval_shape(lambda: build_model(cfg, 7).init(
      {"params": jax.random.key(0), "dropout": jax.random.key(1)}, jnp.zeros((1, 32, 32, 3)),
      train=False))
  with pytest.raises(ValueError, match=r"\(resnet18\): the params do not match.*missing.*unexpected"
                                       r".*config\.model\.backbone"):
    pretrained.load_into(variables["params"], variables["batch_stats"], tmp_path / "r18")
  with pytest.raises(FileNotFoundError, match="ssfer_jax.tools.convert"):
    pretrained.load_into(variables["params"], variables["batch_stats"], tmp_path / "nothing")
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"this is not a checkpoint")
  assert convert.main([f"--input={garbage}", f"--output={tmp_path / 'x'}", "--arch=resnet18"]) == 2
  with pytest.raises(ValueError, match="garbage.pth.*--trust_pickle"):
    convert.convert_file(garbage, tmp_path / "x", "resnet18")


def test_rgb_stem_into_grey_model(torch_net, tmp_path):
  params, stats, _ = convert.convert_state_dict(
      {k: v.numpy() for k, v in torch_net.state_dict().items()}, "resnet18")
  pretrained.write(tmp_path / "r18", params, stats, {"arch": "resnet18"})
  cfg = base_config().model
  cfg.backbone = "resnet18"
  shapes = jax.eval_shape(lambda: build_model(cfg, 7).init(
      {"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 1)), train=False))
  loaded, _ = pretrained.load_into(shapes["params"], shapes["batch_stats"], tmp_path / "r18")
  stem = torch_net.conv1.weight.detach().numpy().sum(axis=1, keepdims=True).transpose(2, 3, 1, 0)
  np.testing.assert_allclose(loaded["backbone"]["conv1"]["kernel"], stem, rtol=1e-6)
