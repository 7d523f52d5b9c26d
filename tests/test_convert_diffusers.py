"""weights_convert for diffusers `UNet2DModel` folders: parity with diffusers, refusals, shapes.

Parity runs the installed diffusers package's own UNet2DModel (CPU torch, random weights) on tiny
configs with google/ddpm-celebahq-256's and google/ddpm-cifar10-32's block layouts, saved as
.safetensors (current attention names) and as .bin (the old names of the google files).
"""

import json
import os
import re

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from flax import traverse_util

from ddrm_jax import checkpoints
from ddrm_jax.models import configs
from ddrm_jax.models.ddpm_unet import DDPMConfig
from test_checkpoints import make_tempdir
from test_convert import run_cli
from weights_convert import convert
from weights_convert import diffusers_map

try:
  import torch  # pylint: disable=g-import-not-at-top
  import diffusers  # pylint: disable=g-import-not-at-top
  from test_adm_unet import _randomise_  # pylint: disable=g-import-not-at-top
except ImportError:  # the convert / test extras are not installed
  torch = diffusers = None

# google/ddpm-celebahq-256's config.json (also ddpm-ema-church/bedroom/cat-256), as published.
CELEBAHQ_256 = {
    '_class_name': 'UNet2DModel', '_diffusers_version': '0.0.4', 'act_fn': 'silu',
    'attention_head_dim': None, 'block_out_channels': [128, 128, 256, 256, 512, 512],
    'center_input_sample': False,
    'down_block_types': ['DownBlock2D', 'DownBlock2D', 'DownBlock2D', 'DownBlock2D',
                         'AttnDownBlock2D', 'DownBlock2D'],
    'downsample_padding': 0, 'flip_sin_to_cos': False, 'freq_shift': 1, 'in_channels': 3,
    'layers_per_block': 2, 'mid_block_scale_factor': 1, 'norm_eps': 1e-06,
    'norm_num_groups': 32, 'out_channels': 3, 'sample_size': 256,
    'time_embedding_type': 'positional',
    'up_block_types': ['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D', 'UpBlock2D',
                       'UpBlock2D'],
}
# google/ddpm-cifar10-32's config.json.
CIFAR10_32 = dict(
    CELEBAHQ_256, block_out_channels=[128, 256, 256, 256], sample_size=32,
    down_block_types=['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'],
    up_block_types=['UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'])
# The DDPMScheduler config beside them.
SCHEDULER = {'_class_name': 'DDPMScheduler', '_diffusers_version': '0.1.1', 'beta_end': 0.02,
             'beta_schedule': 'linear', 'beta_start': 0.0001, 'clip_sample': True,
             'num_train_timesteps': 1000, 'trained_betas': None, 'variance_type': 'fixed_small'}

# Tiny versions of the two block layouts (the cifar one with other GroupNorm settings, which
# the DDPM config expresses: norm_num_groups -> num_groups, norm_eps).
TINY = {
    'celebahq': dict(CELEBAHQ_256, sample_size=32, block_out_channels=[32, 32, 64, 64, 64, 64]),
    'cifar10': dict(CIFAR10_32, sample_size=16, block_out_channels=[32, 64, 64, 64],
                    norm_num_groups=16, norm_eps=1e-5),
}
OLD_NAMES = {v: k for k, v in diffusers_map.OLD_ATTENTION_NAMES.items()}


def old_names(state_dict):
  """The state dict with the attention names of diffusers < 0.14 (query, key, ...)."""
  out = {}
  for key, value in state_dict.items():
    for new, old in OLD_NAMES.items():
      key = key.replace(f'.{new}.', f'.{old}.')
    out[key] = value
  return out


def write_json(path, d):
  with open(path, 'w') as f:
    json.dump(d, f)
  return path


@absltest.skipIf(diffusers is None, 'needs torch and diffusers (the convert and test extras)')
class ParityTest(parameterized.TestCase):
  """Converted eps equals diffusers' UNet2DModel output at a few timesteps."""

  def setUp(self):
    super().setUp()
    self.root = make_tempdir(self)

  def model_folder(self, layout, weights):
    model = _randomise_(diffusers.UNet2DModel(**TINY[layout]), seed=1)
    folder = os.path.join(self.root, f'{layout}_{weights}')
    if weights == 'safetensors':
      model.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors
    else:  # the google files: a pickled state dict with the old attention names
      os.makedirs(folder)
      write_json(os.path.join(folder, 'config.json'), TINY[layout])
      torch.save(old_names(model.state_dict()), os.path.join(folder,
                                                             'diffusion_pytorch_model.bin'))
    write_json(os.path.join(folder, 'scheduler_config.json'), SCHEDULER)
    return model, folder

  def assertParity(self, model, ckpt, size):
    fn, params, config = checkpoints.load_model(ckpt)
    self.assertEqual(config.family, 'ddpm')
    x = np.random.default_rng(2).normal(size=(3, 3, size, size)).astype(np.float32)
    t = np.array([0, 250, 999])
    with torch.no_grad():
      want = model(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy().transpose(0, 2, 3, 1)
    with jax.default_matmul_precision('highest'):
      got = np.asarray(jax.jit(fn)(params, x.transpose(0, 2, 3, 1), t))
    self.assertEqual(got.shape, want.shape)
    self.assertGreater(np.max(np.abs(want)), 0.1)
    self.assertLess(np.max(np.abs(got - want)) / np.max(np.abs(want)), 1e-4)

  @parameterized.product(layout=('celebahq', 'cifar10'), weights=('safetensors', 'bin'))
  def test_matches_diffusers(self, layout, weights):
    model, folder = self.model_folder(layout, weights)
    if weights == 'bin':
      self.assertIn('down_blocks.1.attentions.0.query.weight' if layout == 'cifar10' else
                    'down_blocks.4.attentions.0.proj_attn.bias',
                    torch.load(os.path.join(folder, 'diffusion_pytorch_model.bin'),
                               weights_only=True))
    out = convert.convert_diffusers(folder, os.path.join(self.root, 'ckpt'))
    self.assertParity(model, out, TINY[layout]['sample_size'])
    source = checkpoints.load_source(out)
    self.assertEqual(source['format'], 'diffusers UNet2DModel')
    with open(os.path.join(folder, 'config.json')) as f:
      self.assertEqual(source['diffusers_config'], json.load(f))
    self.assertTrue(source['file'].endswith(f'diffusion_pytorch_model.{weights}'))
    self.assertIn('linear betas 1e-4..0.02 over 1000 steps', source['notes'][0])

  def test_cli_folder_and_file_with_config(self):
    model, folder = self.model_folder('cifar10', 'bin')
    out = os.path.join(self.root, 'ckpt')
    rc, stdout, stderr = run_cli('--src', folder, '--out', out)
    self.assertEqual(rc, 0, stderr)
    self.assertIn('note: ' + os.path.join(folder, 'scheduler_config.json'), stdout)
    self.assertTrue(stdout.rstrip().endswith(f'wrote {out}'))
    self.assertParity(model, out, 16)
    # --src FILE --config its diffusers config.json: the same params.
    rc, _, stderr = run_cli('--src', os.path.join(folder, 'diffusion_pytorch_model.bin'),
                            '--config', os.path.join(folder, 'config.json'), '--out', out + '2')
    self.assertEqual(rc, 0, stderr)
    _, params, config = checkpoints.load_model(out)
    _, params2, config2 = checkpoints.load_model(out + '2')
    self.assertEqual(config2, config)
    jax.tree.map(np.testing.assert_array_equal, params2, params)

  def test_pipeline_folder_with_unet_and_scheduler_subfolders(self):
    model = _randomise_(diffusers.UNet2DModel(**TINY['cifar10']), seed=3)
    root = os.path.join(self.root, 'pipeline')
    model.save_pretrained(os.path.join(root, 'unet'))
    os.makedirs(os.path.join(root, 'scheduler'))
    write_json(os.path.join(root, 'scheduler', 'scheduler_config.json'),
               dict(SCHEDULER, beta_schedule='scaled_linear'))
    with self.assertRaisesRegex(convert.ConversionError,
                                "scheduler_config.json: scheduler config beta_schedule="
                                "'scaled_linear': the sampler uses the linear"):
      convert.convert_diffusers(root, os.path.join(self.root, 'ckpt'))
    self.assertFalse(os.path.exists(os.path.join(self.root, 'ckpt')))
    write_json(os.path.join(root, 'scheduler', 'scheduler_config.json'), SCHEDULER)
    out = convert.convert_diffusers(root, os.path.join(self.root, 'ckpt'))
    self.assertParity(model, out, 16)

  def test_both_attention_spellings_at_once_are_refused(self):
    _, folder = self.model_folder('cifar10', 'safetensors')
    from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
    path = os.path.join(folder, 'diffusion_pytorch_model.safetensors')
    sd = load_file(path)
    sd['down_blocks.1.attentions.0.query.weight'] = sd['down_blocks.1.attentions.0.to_q.weight']
    save_file(sd, path)
    with self.assertRaisesRegex(convert.ConversionError, 'both the old and the new diffusers '
                                r'names \(down_blocks.1.attentions.0.to_q.weight\)'):
      convert.convert_diffusers(folder, os.path.join(self.root, 'ckpt'))


class ConfigTest(parameterized.TestCase):
  """diffusers config -> DDPMConfig, and the full-size networks key for key."""

  def test_celebahq_256_is_the_papers_celeba_hq_network(self):
    self.assertEqual(diffusers_map.ddpm_config(CELEBAHQ_256), configs.get_config('celeba_hq'))

  def test_cifar10_32(self):
    self.assertEqual(diffusers_map.ddpm_config(CIFAR10_32),
                     DDPMConfig(image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                                attn_resolutions=(16,)))

  @parameterized.named_parameters(('celebahq_256', CELEBAHQ_256), ('cifar10_32', CIFAR10_32))
  @absltest.skipIf(diffusers is None, 'needs torch and diffusers')
  def test_full_size_keys_and_shapes(self, d):
    """diffusers' own module (on the meta device: no memory) against jax.eval_shape."""
    with torch.device('meta'):
      model = diffusers.UNet2DModel(**{k: v for k, v in d.items() if not k.startswith('_')})
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    config = diffusers_map.ddpm_config(d)
    for sd in (shapes, diffusers_map.normalise_keys(old_names(shapes))):
      nmap = convert.check_shapes(sd, config, layout='diffusers')
      self.assertEqual({k for k, _ in nmap.values()}, set(sd))
    flat = traverse_util.flatten_dict(configs.param_shapes(config))
    self.assertEqual(sum(int(np.prod(s.shape)) for s in flat.values()),
                     sum(int(np.prod(s)) for s in shapes.values()))

  def test_absent_fields_take_diffusers_defaults(self):
    d = {k: v for k, v in CELEBAHQ_256.items() if k not in ('freq_shift', 'flip_sin_to_cos')}
    with self.assertRaisesRegex(ValueError, r'^diffusers config flip_sin_to_cos=True: our DDPM '
                                r'UNet needs False \(the embedding is \[sin, cos\]'):
      diffusers_map.ddpm_config(d)


class RefusalTest(parameterized.TestCase):
  """Each field our DDPM UNet cannot express: one line naming it and its value, nothing written."""

  def setUp(self):
    super().setUp()
    self.root = make_tempdir(self)

  def convert_with(self, d, weights=True):
    folder = os.path.join(self.root, 'model')
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, 'config.json'), d)
    if weights:
      open(os.path.join(folder, 'diffusion_pytorch_model.bin'), 'wb').close()
    out = os.path.join(self.root, 'out')
    try:
      return convert.convert_diffusers(folder, out)
    finally:
      self.assertFalse(os.path.exists(out))
      self.assertEqual(sorted(os.listdir(self.root)), ['model'])

  @parameterized.named_parameters(
      ('class_name', '_class_name', 'UNet2DConditionModel', 'only UNet2DModel'),
      ('fourier_time', 'time_embedding_type', 'fourier', "needs 'positional'"),
      ('learned_time', 'time_embedding_type', 'learned', "needs 'positional'"),
      ('flip_sin_to_cos', 'flip_sin_to_cos', True, 'needs False'),
      ('freq_shift', 'freq_shift', 0, r'needs 1 \(frequencies are exp'),
      ('several_heads', 'attention_head_dim', 8, 'gives 32 heads of 8 channels; our DDPM UNet '
       'has single-head attention'),
      ('two_heads', 'attention_head_dim', 128, r'gives 2 heads of 128 channels'),
      ('skip_block', 'down_block_types', ['DownBlock2D', 'AttnDownBlock2D', 'SkipDownBlock2D',
                                          'DownBlock2D'], 'SkipDownBlock2D is not a block'),
      ('resnet_down', 'down_block_types', ['ResnetDownsampleBlock2D'] * 4,
       'ResnetDownsampleBlock2D is not a block'),
      ('attn_skip_up', 'up_block_types', ['UpBlock2D', 'UpBlock2D', 'AttnSkipUpBlock2D',
                                          'UpBlock2D'], 'AttnSkipUpBlock2D is not a block'),
      ('asymmetric_attention', 'up_block_types', ['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D',
                                                  'UpBlock2D'], 'same resolutions on the way up'),
      ('class_embed_type', 'class_embed_type', 'timestep', 'needs None'),
      ('num_class_embeds', 'num_class_embeds', 10, 'needs None'),
      ('scale_shift', 'resnet_time_scale_shift', 'scale_shift', "needs 'default'"),
      ('act_fn', 'act_fn', 'gelu', 'uses swish'),
      ('downsample_padding', 'downsample_padding', 1, 'needs 0'),
      ('downsample_type', 'downsample_type', 'resnet', "needs 'conv'"),
      ('upsample_type', 'upsample_type', 'resnet', "needs 'conv'"),
      ('center_input', 'center_input_sample', True, 'needs False'),
      ('no_mid_block', 'mid_block_type', None, "needs 'UNetMidBlock2D'"),
      ('no_mid_attention', 'add_attention', False, 'needs True'),
      ('mid_scale', 'mid_block_scale_factor', 2, 'needs 1'),
      ('time_embedding_dim', 'time_embedding_dim', 256, 'embeds time in 4 \\* 128 = 512'),
      ('attn_norm_groups', 'attn_norm_num_groups', 16, 'norm_num_groups=32 groups'),
      ('widths', 'block_out_channels', [128, 192, 256, 256], 'multiples of the first'),
      ('non_square', 'sample_size', [32, 64], 'square training resolution'),
      ('timesteps', 'num_train_timesteps', 4000, 'uses 1000 timesteps'),
      ('layers_per_level', 'layers_per_block', [2, 2, 2, 2], 'one integer for every level'),
      ('groups', 'norm_num_groups', 24, r'does not divide the widths \[128, 256, 256, 256\]'),
  )
  def test_unsupported_field(self, field, value, needle):
    with self.assertRaises(convert.ConversionError) as cm:
      self.convert_with(dict(CIFAR10_32, **{field: value}))
    message = str(cm.exception)
    self.assertNotIn('\n', message)
    self.assertIn(f'diffusers config {field}={value!r}:', message)
    self.assertRegex(message, needle)

  def test_unknown_field(self):
    with self.assertRaisesRegex(convert.ConversionError, r"fields UNet2DModel does not know: "
                                r"\['resnet_skip'\]"):
      self.convert_with(dict(CIFAR10_32, resnet_skip=True))

  @parameterized.named_parameters(
      ('cosine', 'beta_schedule', 'squaredcos_cap_v2'),
      ('scaled_linear', 'beta_schedule', 'scaled_linear'),
      ('beta_end', 'beta_end', 0.012),
      ('beta_start', 'beta_start', 0.00085),
      ('steps', 'num_train_timesteps', 4000),
      ('v_prediction', 'prediction_type', 'v_prediction'),
      ('sample_prediction', 'prediction_type', 'sample'),
      ('trained_betas', 'trained_betas', [0.1, 0.2]),
      ('zero_snr', 'rescale_betas_zero_snr', True),
  )
  def test_other_noise_schedule(self, field, value):
    folder = os.path.join(self.root, 'model')
    os.makedirs(folder)
    write_json(os.path.join(folder, 'scheduler_config.json'), dict(SCHEDULER, **{field: value}))
    with self.assertRaisesRegex(convert.ConversionError,
                                f'scheduler_config.json: scheduler config {field}='
                                f'{re.escape(repr(value))}: the sampler uses the linear beta '
                                'schedule'):
      self.convert_with(CIFAR10_32)

  def test_unknown_scheduler_field(self):
    folder = os.path.join(self.root, 'model')
    os.makedirs(folder)
    write_json(os.path.join(folder, 'scheduler_config.json'), dict(SCHEDULER, use_karras=True))
    with self.assertRaisesRegex(convert.ConversionError, r"fields we do not know: "
                                r"\['use_karras'\]; not guessing"):
      self.convert_with(CIFAR10_32)

  def test_folder_without_weights_or_config(self):
    with self.assertRaisesRegex(convert.ConversionError, 'holds no diffusion_pytorch_model'
                                r'.safetensors or diffusion_pytorch_model.bin \(it holds '
                                'config.json\\)'):
      self.convert_with(CIFAR10_32, weights=False)
    empty = os.path.join(self.root, 'model', 'empty')
    os.makedirs(empty)
    with self.assertRaisesRegex(convert.ConversionError, 'is a folder without config.json'):
      convert.convert_diffusers(empty, os.path.join(self.root, 'out'))

  def test_cli_one_line_writes_nothing(self):
    folder = os.path.join(self.root, 'model')
    os.makedirs(folder)
    write_json(os.path.join(folder, 'config.json'), dict(CIFAR10_32, attention_head_dim=8))
    out = os.path.join(self.root, 'out')
    rc, stdout, stderr = run_cli('--src', folder, '--out', out)
    self.assertEqual((rc, stdout), (1, ''))
    self.assertEqual(stderr.strip().splitlines(), [
        f'error: {folder}/config.json: diffusers config attention_head_dim=8: gives 32 heads '
        'of 8 channels; our DDPM UNet has single-head attention (attention_head_dim null, or '
        'the block width [256])'])
    self.assertFalse(os.path.exists(out))


class SourceTest(absltest.TestCase):

  def test_source_is_recorded_and_not_part_of_the_config(self):
    root = make_tempdir(self)
    config = DDPMConfig(image_size=16, ch=32, ch_mult=(1, 2), num_res_blocks=1,
                        attn_resolutions=(8,))
    params = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), configs.param_shapes(config))
    source = {'format': 'test', 'notes': ['a note']}
    out = checkpoints.save_checkpoint(os.path.join(root, 'c'), params, config, source=source)
    self.assertEqual(checkpoints.load_source(out), source)
    self.assertEqual(checkpoints.load_config(out), config)
    with open(os.path.join(out, 'config.json')) as f:
      self.assertEqual(json.load(f)['source'], source)
    # A config.json with a source is also a config for --config.
    self.assertEqual(convert.resolve_config(os.path.join(out, 'config.json')), config)
    plain = checkpoints.save_checkpoint(os.path.join(root, 'd'), params, config)
    self.assertIsNone(checkpoints.load_source(plain))
    with self.assertRaisesRegex(checkpoints.CheckpointError, 'not JSON-serialisable'):
      checkpoints.save_checkpoint(os.path.join(root, 'e'), params, config,
                                  source={'x': object()})
    self.assertFalse(os.path.exists(os.path.join(root, 'e')))


if __name__ == '__main__':
  absltest.main()
