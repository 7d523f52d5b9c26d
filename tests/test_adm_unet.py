"""Tests of the ADM UNet / classifier and their name map against PyTorch data and code.

Golden outputs (tests/data/adm_tiny_*.npz, from guided-diffusion), parity with the
guided-diffusion PyTorch modules on further configurations randomised here (skipped without
torch / guided_diffusion), and key-for-key, shape-for-shape agreement of every full-size
manifest with `jax.eval_shape` of the paper's configurations.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import unittest

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ddrm_jax.models import adm_unet
from ddrm_jax.models import configs
from weights_convert import adm_map
from weights_convert import convert

try:
  import torch  # pylint: disable=g-import-not-at-top
except ImportError:
  torch = None
try:
  from guided_diffusion import unet as gd_unet  # pylint: disable=g-import-not-at-top
except ImportError:
  gd_unet = None

DATA = os.path.join(os.path.dirname(__file__), 'data')
ATOL = 1e-4  # max abs difference of a faithful float32 port (reference/README.md)


def _load_json(name):
  with open(os.path.join(DATA, name)) as f:
    return json.load(f)


def _nchw_to_nhwc(a):
  return np.transpose(np.asarray(a), (0, 2, 3, 1))


def _apply(module, params, *args):
  """`module.apply` compiled whole (faster than op by op), float32 matmuls at full precision."""
  with jax.default_matmul_precision('highest'):
    return np.asarray(jax.jit(module.apply)({'params': params}, *args))


def _state_dict_from_npz(z):
  return {k[len('param/'):]: z[k] for k in z.files if k.startswith('param/')}


class GoldenTest(absltest.TestCase):
  """Outputs of guided-diffusion models with random weights, stored as data."""

  def test_class_conditional_unet(self):
    cfg = adm_unet.ADMConfig.from_flags(_load_json('adm_tiny_cc.json'))
    self.assertEqual(cfg.num_classes, 1000)
    self.assertTrue(cfg.learn_sigma)
    self.assertFalse(cfg.use_new_attention_order)
    z = np.load(os.path.join(DATA, 'adm_tiny_cc.npz'))
    params = convert.convert_state_dict(_state_dict_from_npz(z), cfg)
    out = _apply(cfg.module(), params, _nchw_to_nhwc(z['input/0']), z['input/1'], z['input/2'])
    self.assertEqual(out.dtype, np.float32)
    expected = _nchw_to_nhwc(z['output'])
    self.assertEqual(out.shape, expected.shape)
    self.assertLess(np.max(np.abs(out - expected)), ATOL)

  def test_classifier(self):
    kw = _load_json('adm_tiny_classifier.json')  # EncoderUNetModel kwargs: downsample rates
    cfg = adm_unet.ClassifierConfig(
        image_size=kw['image_size'], in_channels=kw['in_channels'],
        model_channels=kw['model_channels'], out_channels=kw['out_channels'],
        num_res_blocks=kw['num_res_blocks'],
        attention_resolutions=[kw['image_size'] // d for d in kw['attention_resolutions']],
        channel_mult=kw['channel_mult'], num_head_channels=kw['num_head_channels'],
        use_scale_shift_norm=kw['use_scale_shift_norm'], resblock_updown=kw['resblock_updown'],
        pool=kw['pool'])
    self.assertEqual(cfg.attention_ds, tuple(kw['attention_resolutions']))
    z = np.load(os.path.join(DATA, 'adm_tiny_classifier.npz'))
    params = convert.convert_state_dict(_state_dict_from_npz(z), cfg)
    logits = _apply(cfg.module(), params, _nchw_to_nhwc(z['input/0']), z['input/1'])
    self.assertEqual(logits.shape, z['output'].shape)
    self.assertLess(np.max(np.abs(logits - z['output'])), ATOL)


def _randomise_(model, seed):
  """Draw every torch parameter at random (zero-initialised ones included), in place."""
  g = torch.Generator().manual_seed(seed)
  norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm)
           for p in m.parameters()}
  with torch.no_grad():
    for name, p in model.named_parameters():
      r = torch.randn(p.shape, generator=g)
      if id(p) in norms:
        r = 1.0 + 0.3 * r if name.endswith('weight') else 0.3 * r
      elif name.endswith('positional_embedding'):
        r = r / p.shape[0] ** 0.5
      elif name.endswith('label_emb.weight'):
        pass
      elif p.ndim >= 2:
        r = r / np.prod(p.shape[1:]) ** 0.5
      else:
        r = 0.3 * r
      p.copy_(r)
  return model.eval()


def _torch_params(model, cfg):
  state_dict = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return convert.convert_state_dict(state_dict, cfg)


# (name, guided-diffusion UNetModel kwargs, equivalent ADMConfig kwargs, input (H, W))
_UNETS = (
    ('unconditional',
     dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2,
          attention_resolutions=(2,), dropout=0.1, channel_mult=(1, 2), num_heads=2,
          num_head_channels=-1, num_heads_upsample=1, use_scale_shift_norm=False,
          resblock_updown=False, conv_resample=True),
     dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=2,
          attention_resolutions=(8,), dropout=0.1, channel_mult=(1, 2), num_heads=2,
          num_head_channels=-1, num_heads_upsample=1, use_scale_shift_norm=False,
          resblock_updown=False, conv_resample=True, learn_sigma=False),
     (16, 16)),
    ('class_conditional',
     dict(image_size=16, in_channels=3, model_channels=64, out_channels=6, num_res_blocks=1,
          attention_resolutions=(1, 4), channel_mult=(0.5, 1, 1), num_classes=5,
          num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True),
     dict(image_size=16, in_channels=3, model_channels=64, out_channels=3, num_res_blocks=1,
          attention_resolutions=(16, 4), channel_mult=(0.5, 1, 1), num_classes=5,
          num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True,
          learn_sigma=True),
     (16, 16)),
    ('new_attention_order',
     dict(image_size=16, in_channels=1, model_channels=32, out_channels=2, num_res_blocks=1,
          attention_resolutions=(2,), channel_mult=(1, 1, 2), num_head_channels=8,
          use_scale_shift_norm=True, resblock_updown=False, conv_resample=False,
          use_new_attention_order=True),
     dict(image_size=16, in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1,
          attention_resolutions=(8,), channel_mult=(1, 1, 2), num_head_channels=8,
          use_scale_shift_norm=True, resblock_updown=False, conv_resample=False,
          use_new_attention_order=True, learn_sigma=True),
     (8, 16)),  # not square: the UNet is fully convolutional
)

_CLASSIFIERS = (
    ('attention_pool',
     dict(image_size=16, in_channels=3, model_channels=32, out_channels=7, num_res_blocks=1,
          attention_resolutions=(2,), channel_mult=(1, 2, 2), num_head_channels=16,
          use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
          pool='attention'),
     dict(image_size=16, in_channels=3, model_channels=32, out_channels=7, num_res_blocks=1,
          attention_resolutions=(8,), channel_mult=(1, 2, 2), num_head_channels=16,
          use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True,
          pool='attention')),
    ('adaptive_pool',
     dict(image_size=16, in_channels=3, model_channels=32, out_channels=4, num_res_blocks=1,
          attention_resolutions=(2, 4), channel_mult=(1, 1, 2), num_heads=2,
          num_head_channels=-1, use_scale_shift_norm=False, resblock_updown=False,
          pool='adaptive'),
     dict(image_size=16, in_channels=3, model_channels=32, out_channels=4, num_res_blocks=1,
          attention_resolutions=(8, 4), channel_mult=(1, 1, 2), num_heads=2,
          num_head_channels=-1, use_scale_shift_norm=False, resblock_updown=False,
          pool='adaptive')),
)


@unittest.skipIf(torch is None or gd_unet is None, 'needs torch and guided_diffusion')
class TorchParityTest(parameterized.TestCase):
  """Against guided-diffusion's PyTorch modules, every parameter drawn at random."""

  @parameterized.named_parameters(*_UNETS)
  def test_unet(self, torch_kwargs, flax_kwargs, hw):
    model = _randomise_(gd_unet.UNetModel(**torch_kwargs), seed=1)
    cfg = adm_unet.ADMConfig(**flax_kwargs)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, cfg.in_channels) + hw).astype(np.float32)
    t = np.array([3, 871])
    labels = None if cfg.num_classes is None else np.array([4, 1])
    with torch.no_grad():
      expected = model(torch.from_numpy(x), torch.from_numpy(t),
                       None if labels is None else torch.from_numpy(labels)).numpy()
    params = _torch_params(model, cfg)
    out = _apply(cfg.module(), params, _nchw_to_nhwc(x), t, labels)
    expected = _nchw_to_nhwc(expected)
    self.assertEqual(out.shape, expected.shape)
    self.assertGreater(np.std(expected), 0.1)  # a signal, not vanishing activations
    self.assertLess(np.max(np.abs(out - expected)), ATOL)

  @parameterized.named_parameters(*_CLASSIFIERS)
  def test_classifier(self, torch_kwargs, flax_kwargs):
    model = _randomise_(gd_unet.EncoderUNetModel(**torch_kwargs), seed=3)
    cfg = adm_unet.ClassifierConfig(**flax_kwargs)
    x = np.random.default_rng(4).standard_normal((3, 3, 16, 16)).astype(np.float32)
    t = np.array([0, 500, 999])
    with torch.no_grad():
      expected = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    params = _torch_params(model, cfg)
    logits = _apply(cfg.module(), params, _nchw_to_nhwc(x), t)
    self.assertEqual(logits.shape, expected.shape)
    self.assertGreater(np.std(expected), 0.1)
    self.assertLess(np.max(np.abs(logits - expected)), ATOL)

  def test_legacy_and_new_order_differ(self):
    # The same weights read in the other qkv order give another function (the order matters).
    _, torch_kwargs, flax_kwargs, hw = _UNETS[2]
    model = _randomise_(gd_unet.UNetModel(**torch_kwargs), seed=5)
    cfg = adm_unet.ADMConfig(**flax_kwargs)
    legacy = dataclasses.replace(cfg, use_new_attention_order=False)
    params = _torch_params(model, cfg)
    x = np.random.default_rng(6).standard_normal((1, 1) + hw).astype(np.float32)
    with torch.no_grad():
      expected = _nchw_to_nhwc(model(torch.from_numpy(x), torch.tensor([10])).numpy())
    out = _apply(legacy.module(), params, _nchw_to_nhwc(x), np.array([10]))
    self.assertGreater(np.max(np.abs(out - expected)), 100 * ATOL)


@unittest.skipIf(torch is None, 'needs torch')
class ConvertFileTest(absltest.TestCase):
  """The golden class-conditional model through a .pt file, the converter and load_model."""

  def test_convert_and_load(self):
    tmp = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, tmp, ignore_errors=True)
    z = np.load(os.path.join(DATA, 'adm_tiny_cc.npz'))
    src = os.path.join(tmp, 'model.pt')
    torch.save({f'module.{k}': torch.from_numpy(v) for k, v in _state_dict_from_npz(z).items()},
               src)
    cfg = adm_unet.ADMConfig.from_flags(_load_json('adm_tiny_cc.json'))
    out_dir = convert.convert_file(src, cfg, os.path.join(tmp, 'ckpt'))
    from ddrm_jax import checkpoints  # pylint: disable=g-import-not-at-top
    fn, params, loaded = checkpoints.load_model(out_dir)
    self.assertEqual(loaded, cfg)
    # The golden test runs these params; here they must arrive unchanged through the files.
    direct = traverse_util.flatten_dict(convert.convert_state_dict(_state_dict_from_npz(z), cfg))
    flat = traverse_util.flatten_dict(params)
    self.assertEqual(set(flat), set(direct))
    for path, value in direct.items():
      np.testing.assert_array_equal(np.asarray(flat[path]), value, err_msg='/'.join(path))
    out = jax.eval_shape(fn, params, _nchw_to_nhwc(z['input/0']), z['input/1'], z['input/2'])
    self.assertEqual(out.shape, (2, 32, 32, 6))
    # The unconditional architecture has no label embedding: the file does not convert to it.
    with self.assertRaisesRegex(ValueError, 'label_emb.weight'):
      convert.convert_file(src, dataclasses.replace(cfg, num_classes=None),
                           os.path.join(tmp, 'ckpt2'))
    self.assertFalse(os.path.exists(os.path.join(tmp, 'ckpt2')))


# Registry name, manifest file, its state-dict section and config section.
_MANIFESTS = tuple(
    dict(testcase_name=name, name=name, filename=f, section=s, config_section=c)
    for name, f, s, c in (
        ('imagenet_256', 'adm_imagenet_256_manifest.json', 'state_dict', 'model'),
        ('imagenet_256_cc', 'adm_imagenet_256_cc_manifest.json', 'state_dict', 'model'),
        ('imagenet_512_cc', 'adm_imagenet_512_cc_manifest.json', 'state_dict', 'model'),
        ('classifier_256', 'adm_imagenet_256_cc_manifest.json', 'classifier_state_dict',
         'classifier'),
        ('classifier_512', 'adm_imagenet_512_cc_manifest.json', 'classifier_state_dict',
         'classifier')))


class ManifestTest(parameterized.TestCase):
  """The paper's checkpoints map key for key and shape for shape onto jax.eval_shape."""

  @parameterized.named_parameters(*_MANIFESTS)
  def test_manifest(self, name, filename, section, config_section):
    manifest = _load_json(filename)
    cfg = configs.get_config(name)
    flags = manifest['config'][config_section]
    from_flags = (adm_unet.ADMConfig if section == 'state_dict'
                  else adm_unet.ClassifierConfig).from_flags(flags)
    self.assertEqual(cfg, from_flags)  # the registry is the paper's configuration
    shapes = {k: tuple(v) for k, v in manifest[section].items()}
    nmap = convert.check_shapes(shapes, cfg)  # raises naming any missing/unused/wrong key
    self.assertEqual({k for k, _ in nmap.values()}, set(shapes))
    self.assertLen(nmap, len(shapes))  # one Flax param per torch key
    flat = traverse_util.flatten_dict(configs.param_shapes(cfg))
    self.assertEqual(set(flat), set(nmap))
    self.assertEqual(sum(int(np.prod(s.shape)) for s in flat.values()),
                     sum(int(np.prod(s)) for s in shapes.values()))

  def test_wrong_architecture_named(self):
    shapes = {k: tuple(v) for k, v in
              _load_json('adm_imagenet_256_manifest.json')['state_dict'].items()}
    with self.assertRaisesRegex(ValueError, r'missing.*label_emb\.weight'):
      convert.check_shapes(shapes, configs.get_config('imagenet_256_cc'))
    with self.assertRaisesRegex(ValueError, r'out\.2\.weight'):  # 6 output channels, not 3
      convert.check_shapes(shapes, dataclasses.replace(configs.get_config('imagenet_256'),
                                                       learn_sigma=False))
    with self.assertRaisesRegex(ValueError, 'family'):
      adm_map.name_map(configs.get_config('celeba_hq'))


def _tiny_cfg(**kw):
  base = dict(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1, 2),
              attention_resolutions=(8,), num_head_channels=16)
  base.update(kw)
  return adm_unet.ADMConfig(**base)


class ConfigTest(parameterized.TestCase):

  def test_registry(self):
    names = ('imagenet_256', 'imagenet_256_cc', 'imagenet_512_cc', 'classifier_256',
             'classifier_512')
    self.assertEqual(set(adm_unet.ADM_CONFIGS), set(names))
    for name in names:
      cfg = configs.get_config(name)
      d = json.loads(json.dumps(cfg.to_dict()))
      self.assertEqual(configs.config_from_dict(d), cfg)
      self.assertEqual(d['family'], 'adm_classifier' if 'classifier' in name else 'adm')
      self.assertEqual(cfg.dtype, 'float32')

  def test_channel_mult_and_attention(self):
    cfg = configs.get_config('imagenet_512_cc')
    self.assertEqual(cfg.widths, (128, 256, 256, 512, 512, 1024, 1024))
    self.assertEqual(cfg.attention_ds, (16, 32, 64))
    self.assertEqual(cfg.heads(512), 8)
    self.assertEqual(cfg.num_outputs, 6)

  @parameterized.named_parameters(
      ('unreachable_attention', dict(attention_resolutions=(12,)), 'attention_resolutions'),
      ('groupnorm_width', dict(model_channels=48), 'divisible by 32'),
      ('heads', dict(num_head_channels=24), 'num_head_channels'),
      ('dtype', dict(dtype='float64'), 'dtype'),
      ('family', dict(family='ddpm'), 'family'),
      ('res_blocks', dict(num_res_blocks=0), 'num_res_blocks'),
  )
  def test_bad_config(self, kw, message):
    with self.assertRaisesRegex(ValueError, message):
      _tiny_cfg(**kw)

  def test_bad_dicts(self):
    with self.assertRaisesRegex(ValueError, 'unknown fields'):
      adm_unet.ADMConfig.from_dict({'width': 3})
    with self.assertRaisesRegex(ValueError, 'pool'):
      adm_unet.ClassifierConfig(pool='spatial')
    self.assertIsNone(_tiny_cfg(num_classes=0).num_classes)


def _random_params(module, *args):
  """Random float32 params of `module` (every leaf, so no layer is zero), without an init."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)['params']
  rng = np.random.default_rng(7)
  return jax.tree_util.tree_map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1]) or 1)
                 ).astype(np.float32), shapes)


class ModuleTest(absltest.TestCase):

  def test_bad_inputs(self):  # all raised while tracing (eval_shape): nothing runs
    model = _tiny_cfg(num_classes=3).module()
    init = lambda *a: jax.eval_shape(model.init, jax.random.PRNGKey(0), *a)
    x, t, y = jnp.zeros((2, 16, 16, 3)), jnp.zeros(2, jnp.int32), jnp.zeros(2, jnp.int32)
    self.assertIn('label_emb', init(x, t, y)['params'])
    with self.assertRaisesRegex(ValueError, 'needs labels'):
      init(x, t)
    with self.assertRaisesRegex(ValueError, r'x must be \(B, H, W, 3\)'):
      init(x[..., :1], t, y)
    with self.assertRaisesRegex(ValueError, 'multiples of 2'):
      init(jnp.zeros((2, 15, 16, 3)), t, y)
    with self.assertRaisesRegex(ValueError, 't must have shape'):
      init(x, t[:1], y)
    with self.assertRaisesRegex(ValueError, 'labels must be int'):
      init(x, t, y.astype(jnp.float32))
    uncond = _tiny_cfg().module()
    with self.assertRaisesRegex(ValueError, 'unconditional'):
      jax.eval_shape(uncond.init, jax.random.PRNGKey(0), x, t, y)
    clf = adm_unet.ClassifierConfig(image_size=16, model_channels=32, num_res_blocks=1,
                                    channel_mult=(1, 2), attention_resolutions=(8,),
                                    num_head_channels=16)
    with self.assertRaisesRegex(ValueError, 'must be 16x16'):
      jax.eval_shape(clf.module().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), t[:1])

  def test_bfloat16_compute(self):
    cfg = _tiny_cfg(image_size=8, channel_mult=(1,), num_classes=3)
    x = np.random.default_rng(8).standard_normal((2, 8, 8, 3)).astype(np.float32)
    t, y = np.array([5, 700]), np.array([0, 2])
    params = _random_params(cfg.module(), x, t, y)
    ref = _apply(cfg.module(), params, x, t, y)
    bf16 = cfg.module(jnp.bfloat16)
    out = np.asarray(jax.jit(bf16.apply)({'params': params}, x, t, y))
    self.assertEqual(out.dtype, np.float32)
    rel = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
    self.assertLess(rel, 0.05)
    self.assertGreater(rel, 0.0)  # it did compute in lower precision
    jaxpr = str(jax.make_jaxpr(lambda p: bf16.apply({'params': p}, x, t, y))(params))
    convs = [line.split('=')[0] for line in jaxpr.splitlines() if 'conv_general_dilated' in line]
    self.assertLen(convs, 14)  # stem, 2 per ResBlock (5), 2 skip 1x1 convs, output head
    self.assertTrue(all('bf16[' in c for c in convs[:-1]), convs)  # the body in bfloat16
    self.assertIn('f32[2,8,8,6]', convs[-1])  # the output head in float32, as guided-diffusion
    exps = [line.split('=')[0] for line in jaxpr.splitlines() if ' exp ' in line]
    self.assertTrue(all('f32[' in e for e in exps), exps)  # softmax in float32
    # The config's dtype is the default compute dtype; params stay float32 whatever it is.
    cfg16 = dataclasses.replace(cfg, dtype='bfloat16')
    self.assertEqual(str(jax.make_jaxpr(lambda p: cfg16.module().apply({'params': p}, x, t, y))(
        params)), jaxpr)
    self.assertTrue(all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(
        jax.eval_shape(bf16.init, jax.random.PRNGKey(0), x, t, y))))


if __name__ == '__main__':
  absltest.main()
