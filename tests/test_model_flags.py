"""guided-diffusion networks by their flags: parity with guided-diffusion's create_model.

The references are built by guided-diffusion's own code (guided-diffusion-sdk): a MODEL_FLAGS
string through its scripts' argparse flags (`add_dict_to_argparser` with
`model_and_diffusion_defaults()`), a YAML file as DPS uses its model_config.yaml
(`create_model(**yaml)`), a CLASSIFIER_FLAGS string through `create_classifier`.
"""

import argparse
import dataclasses
import os
import shlex

from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
import yaml

from ddrm_jax import checkpoints
from ddrm_jax.models import adm_unet
from ddrm_jax.models import configs
from test_checkpoints import make_tempdir
from test_convert import run_cli
from weights_convert import convert
from weights_convert import gd_flags

try:
  import torch  # pylint: disable=g-import-not-at-top
  from guided_diffusion import script_util  # pylint: disable=g-import-not-at-top
  from test_adm_unet import _randomise_  # pylint: disable=g-import-not-at-top
except ImportError:  # the convert / parity extras are not installed
  torch = script_util = None

# DPS's configs/model_config.yaml for ffhq_10m.pt (also DiffPIR's FFHQ model), as published.
FFHQ_YAML = """# Defaults for image training.

image_size: 256
num_channels: 128
num_res_blocks: 1
channel_mult: ""
learn_sigma: True
class_cond: False
use_checkpoint: False
attention_resolutions: 16
num_heads: 4
num_head_channels: 64
num_heads_upsample: -1
use_scale_shift_norm: True
dropout: 0.0
resblock_updown: True
use_fp16: False
use_new_attention_order: False

model_path: models/ffhq_10m.pt
"""
# OpenAI guided-diffusion README's MODEL_FLAGS / CLASSIFIER_FLAGS.
LSUN = ('--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout 0.1 '
        '--image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256 '
        '--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True '
        '--use_scale_shift_norm True')
IMAGENET_128 = ('--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 '
                '--image_size 128 --learn_sigma True --noise_schedule linear --num_channels 256 '
                '--num_heads 4 --num_res_blocks 2 --resblock_updown True --use_fp16 True '
                '--use_scale_shift_norm True')
IMAGENET_64 = ('--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 '
               '--dropout 0.1 --image_size 64 --learn_sigma True --noise_schedule cosine '
               '--num_channels 192 --num_head_channels 64 --num_res_blocks 3 --resblock_updown '
               'True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True')
IMAGENET_256 = ('--attention_resolutions 32,16,8 --class_cond {class_cond} --diffusion_steps 1000 '
                '--image_size {size} --learn_sigma True --noise_schedule linear --num_channels 256 '
                '--num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True '
                '--use_scale_shift_norm True')  # also 512 (with --use_fp16 False there)
CLASSIFIER_128 = ('--image_size 128 --classifier_attention_resolutions 32,16,8 '
                  '--classifier_depth 2 --classifier_width 128 --classifier_pool attention '
                  '--classifier_resblock_updown True --classifier_use_scale_shift_norm True '
                  '--classifier_scale 1.0 --classifier_use_fp16 True')

# Tiny versions (same keys, small sizes; channel_mult given: guided-diffusion has no default
# for 32x32).
TINY_FFHQ_YAML = (FFHQ_YAML.replace('image_size: 256', 'image_size: 32')
                  .replace('num_channels: 128', 'num_channels: 32')
                  .replace('channel_mult: ""', 'channel_mult: "1,2"')
                  .replace('num_head_channels: 64', 'num_head_channels: 16'))
TINY_FFHQ = ('--image_size 32 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 '
             '--learn_sigma True --class_cond False --use_checkpoint False '
             '--attention_resolutions 16 --num_heads 4 --num_head_channels 16 '
             '--num_heads_upsample -1 --use_scale_shift_norm True --dropout 0.0 '
             '--resblock_updown True --use_fp16 False --use_new_attention_order False')
TINY_LSUN = (LSUN.replace('--attention_resolutions 32,16,8', '--attention_resolutions 16,8')
             .replace('--image_size 256', '--image_size 32 --channel_mult 1,1,2')
             .replace('--num_channels 256', '--num_channels 32')
             .replace('--num_head_channels 64', '--num_head_channels 16'))
TINY_CLASSIFIER = ('--image_size 64 --classifier_attention_resolutions 8 --classifier_depth 1 '
                   '--classifier_width 32 --classifier_pool attention --classifier_resblock_updown '
                   'True --classifier_use_scale_shift_norm True --classifier_scale 1.0 '
                   '--classifier_use_fp16 True')


def _script_args(flags, defaults, keys):
  """guided-diffusion's scripts: `flags` parsed by argparse flags made from `defaults`."""
  parser = argparse.ArgumentParser()
  script_util.add_dict_to_argparser(parser, defaults)
  return script_util.args_to_dict(parser.parse_args(shlex.split(flags)), keys)


def gd_model_from_string(flags):
  """image_sample.py: model_and_diffusion_defaults() flags -> create_model_and_diffusion."""
  defaults = script_util.model_and_diffusion_defaults()
  kw = _script_args(flags, defaults, defaults.keys())
  kw['use_fp16'] = False  # half weights do not run on the CPU; the flag keeps the network
  return script_util.create_model_and_diffusion(**kw)[0]


def gd_model_from_yaml(text):
  """DPS: create_model(**model_config.yaml); its create_model reads an int attention_resolutions
  as one resolution, which guided-diffusion's takes as the string."""
  kw = yaml.safe_load(text)
  kw.pop('model_path', None)
  kw['attention_resolutions'] = str(kw['attention_resolutions'])
  kw['use_fp16'] = False
  return script_util.create_model(**kw)


def gd_classifier_from_string(flags):
  """classifier_sample.py: its flags -> create_classifier(the classifier keys)."""
  defaults = dict(script_util.model_and_diffusion_defaults(), classifier_scale=1.0,
                  **script_util.classifier_defaults())
  kw = _script_args(flags, defaults, script_util.classifier_defaults().keys())
  kw['classifier_use_fp16'] = False
  return script_util.create_classifier(**kw)


def torch_shapes(build, arg):
  """{key: shape} of a full-size guided-diffusion network built on the meta device (no memory)."""
  with torch.device('meta'):
    model = build(arg)
  return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def write(path, text):
  with open(path, 'w') as f:
    f.write(text)
  return path


@absltest.skipIf(script_util is None, 'needs torch and guided-diffusion-sdk (the parity extra)')
class ParityTest(parameterized.TestCase):
  """Converted networks compute what guided-diffusion's create_model builds from the flags."""

  def setUp(self):
    super().setUp()
    self.root = make_tempdir(self)

  def save(self, model, name='model.pt'):
    path = os.path.join(self.root, name)
    torch.save(model.state_dict(), path)
    return path

  def assertParity(self, model, ckpt, size, classifier=False):
    fn, params, config = checkpoints.load_model(ckpt)
    self.assertEqual(config.family, 'adm_classifier' if classifier else 'adm')
    x = np.random.default_rng(4).normal(size=(2, 3, size, size)).astype(np.float32)
    t = np.array([10, 900])
    with torch.no_grad():
      want = model(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    with jax.default_matmul_precision('highest'):
      got = np.asarray(jax.jit(fn)(params, x.transpose(0, 2, 3, 1), t))
    if not classifier:
      want = want.transpose(0, 2, 3, 1)
    self.assertEqual(got.shape, want.shape)
    self.assertGreater(np.max(np.abs(want)), 0.1)
    self.assertLess(np.max(np.abs(got - want)) / np.max(np.abs(want)), 1e-4)
    return config

  def test_ffhq_from_yaml_file_cli(self):
    model = _randomise_(gd_model_from_yaml(TINY_FFHQ_YAML), seed=5)
    src = self.save(model)
    flags_file = write(os.path.join(self.root, 'model_config.yaml'), TINY_FFHQ_YAML)
    out = os.path.join(self.root, 'ckpt')
    rc, stdout, stderr = run_cli('--src', src, '--model_flags', flags_file, '--out', out)
    self.assertEqual(rc, 0, stderr)
    for key in ('model_path', 'use_checkpoint', 'use_fp16'):
      self.assertIn(f'note: ignored {key}=', stdout)
    config = self.assertParity(model, out, 32)
    self.assertEqual((config.num_res_blocks, config.attention_resolutions, config.learn_sigma),
                     (1, (16,), True))
    source = checkpoints.load_source(out)
    self.assertEqual(source['format'], 'guided-diffusion model')
    self.assertEqual((source['flags_from'], source['defaults']), (flags_file, 'create_model'))
    self.assertEqual(source['flags'], yaml.safe_load(TINY_FFHQ_YAML))

  def test_ffhq_from_flags_string_cli(self):
    model = _randomise_(gd_model_from_string(TINY_FFHQ), seed=6)
    src = self.save(model)
    out = os.path.join(self.root, 'ckpt')
    rc, _, stderr = run_cli('--src', src, '--model_flags', TINY_FFHQ, '--out', out)
    self.assertEqual(rc, 0, stderr)
    self.assertParity(model, out, 32)
    self.assertEqual(checkpoints.load_source(out)['defaults'], 'script')

  def test_lsun_from_string_and_yaml(self):
    model = _randomise_(gd_model_from_string(TINY_LSUN), seed=7)
    src = self.save(model)
    flags, defaults, origin = gd_flags.read_flags(TINY_LSUN)
    out = convert.convert_flags(src, flags, os.path.join(self.root, 'ckpt'), defaults=defaults,
                                origin=origin)
    config = self.assertParity(model, out, 32)
    self.assertEqual((config.attention_ds, config.dropout, config.num_res_blocks),
                     ((2, 4), 0.1, 2))
    notes = checkpoints.load_source(out)['notes']
    self.assertIn("ignored use_fp16='True': compute precision (ours: the dtype setting)", notes)
    # The same keys as a create_model YAML file: the same network, the same params.
    path = write(os.path.join(self.root, 'lsun.yaml'), yaml.safe_dump(flags))
    out2 = convert.convert_flags(src, *gd_flags.read_flags(path)[:1],
                                 os.path.join(self.root, 'ckpt2'), defaults='create_model')
    _, params, _ = checkpoints.load_model(out)
    _, params2, config2 = checkpoints.load_model(out2)
    # num_heads: create_model's default 1, the scripts' 4; num_head_channels=16 overrides both.
    self.assertEqual((config2.num_heads, config.num_heads), (1, 4))
    self.assertEqual(dataclasses.replace(config2, num_heads=4), config)
    jax.tree.map(np.testing.assert_array_equal, params2, params)

  def test_classifier_from_flags_string(self):
    model = _randomise_(gd_classifier_from_string(TINY_CLASSIFIER), seed=8)
    src = self.save(model)
    flags, defaults, origin = gd_flags.read_flags(TINY_CLASSIFIER)
    out = convert.convert_flags(src, flags, os.path.join(self.root, 'ckpt'), classifier=True,
                                defaults=defaults, origin=origin)
    config = self.assertParity(model, out, 64, classifier=True)
    self.assertEqual(config.channel_mult, (1, 2, 3, 4))  # create_classifier's for 64x64
    notes = checkpoints.load_source(out)['notes']
    self.assertTrue(any(n.startswith("ignored classifier_scale='1.0'") for n in notes), notes)


@absltest.skipIf(script_util is None, 'needs torch and guided-diffusion-sdk (the parity extra)')
class FullSizeTest(parameterized.TestCase):
  """The public checkpoints' flags map key for key onto guided-diffusion's full-size networks."""

  @parameterized.named_parameters(
      ('ffhq_dps_yaml', 'yaml', FFHQ_YAML, False),
      ('lsun', 'string', LSUN, False),
      ('imagenet_128', 'string', IMAGENET_128, False),
      ('classifier_128', 'string', CLASSIFIER_128, True))
  def test_shapes(self, form, flags, classifier):
    if form == 'yaml':
      values, defaults = yaml.safe_load(flags), 'create_model'
      shapes = torch_shapes(gd_model_from_yaml, flags)
    else:
      values, defaults = gd_flags.parse_flag_string(flags), 'script'
      shapes = torch_shapes(gd_classifier_from_string if classifier else gd_model_from_string,
                            flags)
    config, _ = configs.from_guided_diffusion_flags(values, classifier=classifier,
                                                    defaults=defaults)
    nmap = convert.check_shapes(shapes, config)  # jax.eval_shape of our network
    self.assertEqual({k for k, _ in nmap.values()}, set(shapes))

  def test_ffhq_network(self):
    config, _ = configs.from_guided_diffusion_flags(yaml.safe_load(FFHQ_YAML))
    self.assertEqual(config.widths, (128, 128, 256, 256, 512, 512))
    self.assertEqual((config.attention_ds, config.heads(512), config.num_outputs), ((16,), 8, 6))
    self.assertIsNone(config.num_classes)

  def test_imagenet_128_heads(self):  # no num_head_channels: 4 heads everywhere
    model = torch_shapes(gd_model_from_string, IMAGENET_128)
    config, _ = configs.from_guided_diffusion_flags(gd_flags.parse_flag_string(IMAGENET_128),
                                                    defaults='script')
    self.assertEqual((config.num_classes, config.num_head_channels, config.heads(1024)),
                     (1000, -1, 4))
    self.assertEqual(model['label_emb.weight'], (1000, 1024))


class FlagsTest(parameterized.TestCase):
  """guided-diffusion's meaning of each value, and refusals by name."""

  @parameterized.parameters(('False', False), ('false', False), ('no', False), ('f', False),
                            ('0', False), ('True', True), ('YES', True), ('t', True), ('1', True),
                            (True, True), (False, False), (1, True), (0, False))
  def test_str2bool(self, value, want):
    config, _ = configs.from_guided_diffusion_flags(
        {'image_size': 64, 'num_channels': 64, 'num_res_blocks': 1, 'learn_sigma': value})
    self.assertEqual(config.learn_sigma, want)

  def test_from_flags_reads_strings(self):
    """The bug of issue 22: bool('False') is True."""
    flags = {'image_size': '256', 'num_channels': '256', 'num_res_blocks': '2',
             'learn_sigma': 'False', 'class_cond': 'False', 'use_scale_shift_norm': 'True',
             'resblock_updown': 'False', 'attention_resolutions': '32,16,8',
             'num_head_channels': '64', 'dropout': '0.1', 'use_fp16': 'True'}
    config = adm_unet.ADMConfig.from_flags(flags, dtype='bfloat16')
    self.assertEqual((config.learn_sigma, config.num_classes, config.use_scale_shift_norm,
                      config.resblock_updown, config.dropout, config.dtype),
                     (False, None, True, False, 0.1, 'bfloat16'))
    classifier = adm_unet.ClassifierConfig.from_flags(
        {'image_size': '256', 'classifier_use_scale_shift_norm': 'False',
         'classifier_resblock_updown': 'f'})
    self.assertEqual((classifier.use_scale_shift_norm, classifier.resblock_updown),
                     (False, False))
    with self.assertRaisesRegex(ValueError, r"unknown model flags \['num_channel'\]"):
      adm_unet.ADMConfig.from_flags(dict(flags, num_channel='128'))

  def test_defaults(self):
    """Missing keys: create_model's defaults for keyword files, the scripts' for strings."""
    flags = {'image_size': '64', 'num_channels': '64', 'num_res_blocks': '1'}
    kw, _ = configs.guided_diffusion_kwargs(flags)
    self.assertEqual((kw['num_heads'], kw['attention_resolutions'], kw['use_scale_shift_norm'],
                      kw['channel_mult']), (1, (16,), False, (1, 2, 3, 4)))
    kw, _ = configs.guided_diffusion_kwargs(flags, defaults='script')
    self.assertEqual((kw['num_heads'], kw['attention_resolutions'], kw['use_scale_shift_norm']),
                     (4, (16, 8), True))
    kw, _ = configs.guided_diffusion_kwargs({}, defaults='script')  # image_size 64 etc.
    self.assertEqual((kw['image_size'], kw['model_channels'], kw['num_res_blocks']),
                     (64, 128, 2))
    with self.assertRaisesRegex(ValueError, 'model flag num_channels is missing'):
      configs.guided_diffusion_kwargs({'image_size': 64, 'num_res_blocks': 1})

  @parameterized.parameters((512, (0.5, 1, 1, 2, 2, 4, 4)), (256, (1, 1, 2, 2, 4, 4)),
                            (128, (1, 1, 2, 3, 4)), (64, (1, 2, 3, 4)))
  def test_default_channel_mult_by_size(self, size, want):
    kw, _ = configs.guided_diffusion_kwargs(
        {'image_size': size, 'num_channels': 128, 'num_res_blocks': 1, 'channel_mult': ''})
    self.assertEqual(kw['channel_mult'], want)

  @parameterized.named_parameters(
      ('yaml_int', 16, (16,)), ('string', '32,16,8', (32, 16, 8)), ('list', [32, 16], (32, 16)))
  def test_attention_resolutions(self, value, want):
    config, _ = configs.from_guided_diffusion_flags(
        {'image_size': 256, 'num_channels': 128, 'num_res_blocks': 1,
         'attention_resolutions': value, 'num_head_channels': 64})
    self.assertEqual(config.attention_resolutions, want)
    self.assertEqual(config.attention_ds, tuple(256 // r for r in want))  # downsample rates

  def test_flag_strings(self):
    self.assertEqual(gd_flags.parse_flag_string(
        'MODEL_FLAGS="--image_size 64 --num_heads_upsample -1 --channel_mult= --x=1"'),
                     {'image_size': '64', 'num_heads_upsample': '-1', 'channel_mult': '',
                      'x': '1'})
    self.assertEqual(gd_flags.parse_flag_string('--a 1 --a 2'), {'a': '2'})  # argparse: last
    for bad, needle in (('--class_cond', '--class_cond has no value'),
                        ('image_size 64', "expected --key value, got 'image_size'"),
                        ('--a "1', 'cannot parse flags'), ('', 'flags are empty')):
      with self.assertRaisesRegex(ValueError, needle):
        gd_flags.parse_flag_string(bad)

  def test_files(self):
    root = make_tempdir(self)
    for name, text in (('a.yaml', 'image_size: 64\nlearn_sigma: "False"\n'),
                       ('a.json', '{"image_size": 64, "learn_sigma": "False"}')):
      flags, defaults, origin = gd_flags.read_flags(write(os.path.join(root, name), text))
      self.assertEqual((flags, defaults, origin),
                       ({'image_size': 64, 'learn_sigma': 'False'}, 'create_model',
                        os.path.join(root, name)))
    for text, needle in (('- 1\n- 2\n', 'must hold a mapping'), ('a: [1\n', 'cannot read')):
      with self.assertRaisesRegex(ValueError, needle):
        gd_flags.read_flags(write(os.path.join(root, 'bad.yaml'), text))
    with self.assertRaisesRegex(ValueError, 'no such flags file'):
      gd_flags.read_flags(os.path.join(root, 'absent.yml'))

  @parameterized.named_parameters(
      ('unknown', {'num_channel': 128}, r"unknown model flags \['num_channel'\]: not keys of "
       "guided-diffusion's create_model"),
      ('sampling_flag', {'batch_size': '4'}, r"unknown model flags \['batch_size'\]"),
      ('cosine', {'noise_schedule': 'cosine'}, "model flag noise_schedule='cosine': the sampler "
       'uses the linear beta schedule'),
      ('steps', {'diffusion_steps': '4000'}, 'model flag diffusion_steps=4000: the sampler uses '
       '1000'),
      ('x0', {'predict_xstart': 'True'}, 'model flag predict_xstart=True: the network predicts'),
      ('bool', {'class_cond': 'maybe'}, "model flag class_cond='maybe': expected a boolean"),
      ('int', {'num_res_blocks': '2.5'}, "model flag num_res_blocks='2.5': expected an integer"),
      ('float_mult', {'channel_mult': '0.5,1,2'}, 'model flag channel_mult=.*expected '
       'comma-separated integers'),
      ('no_default_mult', {'image_size': 32}, "channel_mult='' has no default for "
       'image_size=32'),
      ('ddpm_type', {'type': 'simple'}, "model flag type='simple': only DDRM's 'openai'"),
      ('heads', {'num_head_channels': 48}, 'not divisible by num_head_channels=48'),
  )
  def test_refused(self, change, needle):
    flags = dict({'image_size': 64, 'num_channels': 64, 'num_res_blocks': 1}, **change)
    with self.assertRaisesRegex(ValueError, needle):
      configs.from_guided_diffusion_flags(flags)

  def test_classifier_keys(self):
    with self.assertRaisesRegex(ValueError, r"unknown classifier flags \['num_channels'\]: not "
                                "keys of guided-diffusion's create_classifier"):
      configs.from_guided_diffusion_flags({'image_size': 64, 'num_channels': 64},
                                          classifier=True)
    _, notes = configs.from_guided_diffusion_flags(
        {'image_size': 64, 'learn_sigma': True, 'classifier_use_fp16': True}, classifier=True)
    self.assertEqual(sorted(notes), ['classifier_use_fp16', 'learn_sigma'])

  @parameterized.parameters(('True', 256, 'imagenet_256_cc'), ('False', 256, 'imagenet_256'),
                            ('True', 512, 'imagenet_512_cc'))
  def test_readme_flags_give_the_papers_networks(self, class_cond, size, name):
    flags = IMAGENET_256.format(class_cond=class_cond, size=size)
    config, _ = configs.from_guided_diffusion_flags(gd_flags.parse_flag_string(flags),
                                                    defaults='script')
    self.assertEqual(config, configs.get_config(name))

  def test_imagenet_64_is_refused(self):
    """Its cosine schedule is not the sampler's: refused, never ignored."""
    with self.assertRaisesRegex(ValueError, "noise_schedule='cosine'"):
      configs.from_guided_diffusion_flags(gd_flags.parse_flag_string(IMAGENET_64),
                                          defaults='script')


class CliRefusalTest(absltest.TestCase):

  def test_one_line_and_nothing_written(self):
    root = make_tempdir(self)
    src = os.path.join(root, 'model.pt')
    open(src, 'wb').close()
    out = os.path.join(root, 'out')
    for args, line in (
        (('--model_flags', IMAGENET_64), "error: model flag noise_schedule='cosine': the "
         'sampler uses the linear beta schedule (1e-4 to 0.02 over 1000 steps) this network was '
         'not trained with; not converting it'),
        (('--model_flags', LSUN + ' --num_samples 100'), "error: unknown model flags "
         "['num_samples']: not keys of guided-diffusion's create_model (known: "),
        (('--classifier_flags', '--image_size 128 --classifier_width'),
         'error: --classifier_flags: flags: --classifier_width has no value'),
        (('--model_flags', LSUN, '--config', 'celeba_hq'),
         'error: give one of --config, --model_flags')):
      rc, stdout, stderr = run_cli('--src', src, '--out', out, *args)
      self.assertEqual(stdout, '')
      self.assertIn(rc, (1, 2))
      self.assertLen(stderr.strip().splitlines(), 1, stderr)
      self.assertStartsWith(stderr.strip(), line)
      self.assertFalse(os.path.exists(out))
    self.assertEqual(os.listdir(root), ['model.pt'])


if __name__ == '__main__':
  absltest.main()
