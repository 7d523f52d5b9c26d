"""Tests of ddrm_jax.io against Pillow/numpy computations done here."""

import contextlib
import os
import shutil
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np
from PIL import Image

from ddrm_jax import io


def _tempdir(test):
  d = tempfile.mkdtemp()
  test.addCleanup(shutil.rmtree, d, ignore_errors=True)
  return d


class ReadWriteTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = _tempdir(self)
    self.rng = np.random.default_rng(0)

  def path(self, name):
    return os.path.join(self.dir, name)

  def test_rgb_png_8bit(self):
    a = self.rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(a).save(self.path("a.png"))
    x = io.read_image(self.path("a.png"))
    self.assertEqual(x.dtype, np.float32)
    self.assertEqual(x.shape, (6, 5, 3))
    np.testing.assert_allclose(x, a.astype(np.float64) / 255 * 2 - 1, atol=1e-6)

  def test_gray_png_16bit_keeps_precision(self):
    a = self.rng.integers(0, 65536, (4, 7), dtype=np.uint16)
    a[0, 0], a[0, 1] = 0, 65535
    Image.fromarray(a).save(self.path("g16.png"))
    x = io.read_image(self.path("g16.png"))
    self.assertEqual(x.shape, (4, 7, 1))
    np.testing.assert_allclose(x[..., 0], a.astype(np.float64) / 65535 * 2 - 1, atol=1e-6)
    # Neighbouring 16-bit levels stay distinct (not truncated to 8 bits).
    b = np.array([[1000, 1001]], np.uint16)
    Image.fromarray(b).save(self.path("g16b.png"))
    y = io.read_image(self.path("g16b.png"))
    self.assertNotEqual(y[0, 0, 0], y[0, 1, 0])

  def test_gray_to_rgb_and_back(self):
    a = self.rng.integers(0, 256, (3, 4), dtype=np.uint8)
    Image.fromarray(a).save(self.path("g.png"))
    x = io.read_image(self.path("g.png"), channels=3)
    self.assertEqual(x.shape, (3, 4, 3))
    for c in range(3):
      np.testing.assert_allclose(x[..., c], a / 255 * 2 - 1, atol=1e-6)
    rgb = self.rng.uniform(-1, 1, (3, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(io.to_channels(rgb, 1)[..., 0], rgb.astype(np.float64).mean(-1),
                               atol=1e-6)

  def test_jpeg_matches_pillow_decode(self):
    a = self.rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(a).save(self.path("a.jpg"), quality=90)
    decoded = np.asarray(Image.open(self.path("a.jpg")).convert("RGB"), np.float64)
    x = io.read_image(self.path("a.jpg"))
    np.testing.assert_allclose(x, decoded / 255 * 2 - 1, atol=1e-6)

  def test_jpeg_exif_orientation_applied(self):
    a = self.rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    im.save(self.path("r.jpg"), exif=exif, quality=95)
    x = io.read_image(self.path("r.jpg"))
    self.assertEqual(x.shape, (12, 8, 3))

  def test_opaque_rgba_and_palette_converted(self):
    a = self.rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    rgba = np.concatenate([a, np.full((5, 5, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba).save(self.path("o.png"))
    np.testing.assert_allclose(io.read_image(self.path("o.png")), a / 255 * 2 - 1, atol=1e-6)
    pal = Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(self.path("p.png"))
    expected = np.asarray(pal.convert("RGB"), np.float64) / 255 * 2 - 1
    np.testing.assert_allclose(io.read_image(self.path("p.png")), expected, atol=1e-6)

  def test_transparent_refused(self):
    rgba = np.full((4, 4, 4), 200, np.uint8)
    rgba[1, 1, 3] = 0
    Image.fromarray(rgba).save(self.path("t.png"))
    with self.assertRaisesRegex(io.ImageError, "t.png.*transparent"):
      io.read_image(self.path("t.png"))

  def test_unreadable_and_missing(self):
    with open(self.path("bad.png"), "w") as f:
      f.write("not an image")
    with self.assertRaisesRegex(io.ImageError, "bad.png: cannot read image"):
      io.read_image(self.path("bad.png"))
    with self.assertRaisesRegex(io.ImageError, "no such file"):
      io.read_image(self.path("missing.png"))

  def test_write_clamps_and_round_trips(self):
    x = self.rng.uniform(-1.5, 1.5, (5, 6, 3)).astype(np.float32)
    io.write_image(self.path("sub/w.png"), x)
    got = np.asarray(Image.open(self.path("sub/w.png")), np.float64)
    expected = np.round(np.clip((x.astype(np.float64) + 1) / 2, 0, 1) * 255)
    np.testing.assert_array_equal(got, expected)
    g = self.rng.uniform(-1, 1, (5, 6, 1)).astype(np.float32)
    io.write_image(self.path("g16.png"), g, bits=16)
    np.testing.assert_allclose(io.read_image(self.path("g16.png")), g, atol=1.0 / 65535)


class GeometryTest(absltest.TestCase):

  def test_center_crop_same_scale_is_a_crop(self):
    x = np.random.default_rng(1).uniform(-1, 1, (20, 40, 3)).astype(np.float32)
    np.testing.assert_array_equal(io.center_crop(x, (20, 20)), x[:, 10:30])
    np.testing.assert_array_equal(io.center_crop(x.transpose(1, 0, 2), (20, 20)),
                                  x.transpose(1, 0, 2)[10:30])

  def test_resize_matches_pillow_and_keeps_constants(self):
    x = np.random.default_rng(2).uniform(-1, 1, (12, 10, 2)).astype(np.float32)
    y = io.resize(x, (6, 5))
    self.assertEqual(y.shape, (6, 5, 2))
    for c in range(2):
      ref = np.asarray(Image.fromarray(x[..., c]).resize((5, 6), Image.Resampling.BICUBIC))
      np.testing.assert_allclose(y[..., c], np.clip(ref, -1, 1), atol=1e-6)
    const = np.full((9, 9, 3), 0.25, np.float32)
    np.testing.assert_allclose(io.resize(const, (4, 4)), 0.25, atol=1e-6)

  def test_fit(self):
    x = np.zeros((8, 6, 3), np.float32)
    self.assertIs(io.fit(x, (8, 6), "error"), x)
    with self.assertRaisesRegex(io.ImageError, "8x6 differs from the expected 4x4.*resize") as cm:
      io.fit(x, (4, 4), "error", name="img")
    self.assertNotIn("--", str(cm.exception))  # The library names settings, the CLI flags.
    self.assertIn("--resize=resize", cm.exception.with_flags())
    self.assertEqual(io.fit(x, (4, 4), "resize").shape, (4, 4, 3))
    self.assertEqual(io.fit(x, (4, 4), "center_crop").shape, (4, 4, 3))

  def test_upsample_nearest(self):
    x = np.arange(6, dtype=np.float32).reshape(2, 3, 1)
    y = io.upsample_nearest(x, (4, 6))
    for i in range(4):
      for j in range(6):
        self.assertEqual(y[i, j, 0], x[i // 2, j // 2, 0])

  def test_grid_enlarges_small_cells(self):
    a = np.random.default_rng(3).uniform(-1, 1, (3, 4, 3)).astype(np.float32)
    g = io.make_grid([[a]], pad=1, min_cell=10)  # factor 4: 12x16 cells
    self.assertEqual(g.shape, (1 + 12 + 1, 1 + 16 + 1, 3))
    np.testing.assert_array_equal(g[1:13, 1:17], a.repeat(4, 0).repeat(4, 1))

  def test_grid_layout(self):
    a = np.full((3, 4, 3), -1.0, np.float32)
    b = np.full((3, 4, 1), 0.5, np.float32)
    g = io.make_grid([[a, b], [b]], pad=1, pad_value=1.0)
    self.assertEqual(g.shape, (1 + 2 * 4, 1 + 2 * 5, 3))
    np.testing.assert_array_equal(g[1:4, 1:5], a)
    np.testing.assert_array_equal(g[1:4, 6:10], np.full((3, 4, 3), 0.5))
    np.testing.assert_array_equal(g[5:8, 1:5], np.full((3, 4, 3), 0.5))
    np.testing.assert_array_equal(g[5:8, 6:10], np.ones((3, 4, 3)))  # Empty cell = padding.
    np.testing.assert_array_equal(g[0], np.ones((11, 3)))


class LabelColumnsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(4)
    self.cells = [rng.uniform(-1, 0, (60, 60, 3)).astype(np.float32) for _ in range(3)]
    self.grid = io.make_grid([self.cells, self.cells[::-1]], pad=2)  # 2 rows of 3 columns.

  def test_strip_above_keeps_the_grid(self):
    out = io.label_columns(self.grid, ['one', 'two', 'three'])
    strip = out.shape[0] - self.grid.shape[0]
    self.assertGreater(strip, 5)
    self.assertEqual(out.shape[1:], self.grid.shape[1:])  # Width and channels unchanged.
    np.testing.assert_array_equal(out[strip:], self.grid)
    ink = out[:strip, :, 0] < 0.0  # Dark text on the white padding colour.
    for j in range(3):  # Each label is drawn over its own cell, centred.
      left, right = 2 + j * 62, 2 + j * 62 + 60
      cols = np.nonzero(ink[:, left:right].any(axis=0))[0]
      self.assertGreater(len(cols), 0)
      self.assertLessEqual(abs((cols[0] + cols[-1]) / 2 - 29.5), 1.0)
    np.testing.assert_array_equal(out[:strip, :2], 1.0)  # The border stays padding.
    np.testing.assert_array_equal(out[:strip, 62:64], 1.0)  # So do the gaps between cells.

  def test_a_wrong_label_count_raises(self):
    for labels in (['a', 'b'],  # Divides the width: caught by the padding check.
                   ['a', 'b', 'c', 'd'],  # Does not divide it.
                   ['a'] * 6, []):
      with self.assertRaisesRegex(ValueError, 'labels'):
        io.label_columns(self.grid, labels)
    with self.assertRaisesRegex(ValueError, 'grid'):
      io.label_columns(self.grid[..., 0], ['a', 'b', 'c'])

  def test_gray_grid_and_long_labels_fit_their_cells(self):
    gray = io.make_grid([[c[..., :1] for c in self.cells]], pad=2)
    out = io.label_columns(gray, ['a rather long label', 'b', 'c'])
    self.assertEqual(out.shape[1:], (gray.shape[1], 1))
    strip = out.shape[0] - gray.shape[0]
    ink = np.nonzero((out[:strip, :, 0] < 0.0).any(axis=0))[0]
    self.assertGreaterEqual(ink[0], 2)
    self.assertLess(ink[0], 62)  # The long label stays within its own cell.
    self.assertFalse((out[:strip, 60:64, 0] < 0.0).any())


class InputsTest(absltest.TestCase):

  def test_expand(self):
    d = _tempdir(self)
    for name in ["b.png", "a.JPG", "c.txt", "z.png"]:
      open(os.path.join(d, name), "w").close()
    os.mkdir(os.path.join(d, "sub.png"))
    self.assertEqual(io.expand_inputs(d), [os.path.join(d, n) for n in ["a.JPG", "b.png", "z.png"]])
    self.assertEqual(io.expand_inputs(os.path.join(d, "*.png")),
                     [os.path.join(d, n) for n in ["b.png", "z.png"]])
    # A .txt file is a list of images (issue 15), in its order, relative to its folder.
    with self.assertRaisesRegex(ValueError, "the list names no file"):
      io.expand_inputs(os.path.join(d, "c.txt"))
    with open(os.path.join(d, "c.txt"), "w") as fh:
      fh.write("z.png\n" + os.path.join(d, "b.png") + "\n")
    self.assertEqual(io.expand_inputs(os.path.join(d, "c.txt")),
                     [os.path.join(d, "z.png"), os.path.join(d, "b.png")])
    with self.assertRaisesRegex(ValueError, "no such file or folder"):
      io.expand_inputs(os.path.join(d, "nope.png"))
    with self.assertRaisesRegex(ValueError, "no file matches"):
      io.expand_inputs(os.path.join(d, "*.bmp"))
    empty = tempfile.mkdtemp(dir=d)
    with self.assertRaisesRegex(ValueError, "no image files"):
      io.expand_inputs(empty)

  def test_unique_stems(self):
    # The path under the common folder; names never collide (issue 11, item 2: `x/a_2` used to
    # collide with the second `a` renamed `a_2`).
    self.assertEqual(io.unique_stems(["x/a.png", "y/a.jpg", "b.png"]), ["x/a", "y/a", "b"])
    self.assertEqual(io.unique_stems(["r/x/a.png", "r/y/a.png", "r/x/a_2.png"]),
                     ["x/a", "y/a", "x/a_2"])
    self.assertEqual(io.unique_stems(["/d/a.png"]), ["a"])
    cases = [["d/a.png", "d/a.jpg", "d/A.png", "d/a.jpg~0.png", "d/b.png"],
             ["d/a.png", "d/a.PNG", "d/a.png"], ["x/a.png", "x/a_2.png", "y/a.png", "y/a_1.png"]]
    for files in cases:
      names = io.unique_stems(files)
      self.assertLen({n.casefold() for n in names}, len(files), names)
      # Sample files (<name>_<k>) never collide either.
      samples = {f"{n}_{k}".casefold() for n in names for k in range(12)}
      self.assertLen(samples, 12 * len(files))

  def test_write_is_atomic(self):
    d = _tempdir(self)
    path = os.path.join(d, "a.png")
    io.write_image(path, np.zeros((4, 4, 3), np.float32))
    before = open(path, "rb").read()

    def interrupted_save(im, fp, *args, **kwargs):
      del im, args, kwargs
      with (open(fp, "wb") if isinstance(fp, str) else contextlib.nullcontext(fp)) as fh:
        fh.write(b"\x89PNG half")
      raise KeyboardInterrupt

    for target in (path, os.path.join(d, "new.png")):
      with mock.patch.object(Image.Image, "save", interrupted_save):
        with self.assertRaises(KeyboardInterrupt):
          io.write_image(target, np.ones((4, 4, 3), np.float32))
    self.assertEqual(sorted(os.listdir(d)), ["a.png"])  # no truncated or temporary file
    self.assertEqual(open(path, "rb").read(), before)

  def test_existing_file_with_glob_characters(self):
    d = _tempdir(self)
    for name in ("photo [1].png", "photo 1.png"):
      open(os.path.join(d, name), "w").close()
    self.assertEqual(io.expand_inputs(os.path.join(d, "photo [1].png")),
                     [os.path.join(d, "photo [1].png")])
    self.assertEqual(io.expand_inputs(os.path.join(d, "photo [0-9].png")),
                     [os.path.join(d, "photo 1.png")])  # a pattern, when no file has the name



class SmallDefectsTest(absltest.TestCase):
  """Issue 21 item 11."""

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp()
    self.addCleanup(shutil.rmtree, self.dir, True)

  def test_a_file_listed_twice_gets_its_stem_then_a_suffix(self):
    f = os.path.join(self.dir, "celeba_0.png")
    self.assertEqual(io.unique_stems([f, f]), ["celeba_0", "celeba_0~1"])
    g = os.path.join(self.dir, "celeba_0.jpg")
    self.assertEqual(io.unique_stems([f, g]), ["celeba_0.png", "celeba_0.jpg"])

  def test_palette_transparency_is_named_so(self):
    path = os.path.join(self.dir, "p.png")
    im = Image.new("P", (4, 4))
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    im.info["transparency"] = 0
    im.save(path, transparency=0)
    with self.assertRaisesRegex(io.ImageError, r"a palette image with transparency"):
      io.read_image(path)

  def test_a_folder_in_a_list_is_called_a_folder(self):
    os.makedirs(os.path.join(self.dir, "sub"))
    lst = os.path.join(self.dir, "l.txt")
    with open(lst, "w") as fh:
      fh.write("sub\n")
    with self.assertRaisesRegex(ValueError, r"line 1: sub is a folder, not an image file"):
      io.read_list(lst)

  def test_grid_size_is_bounded(self):
    rows = [[np.zeros((64, 2000, 3), np.float32)] * 3]
    grid = io.make_grid(rows, min_cell=256, max_side=8192)
    self.assertLessEqual(max(grid.shape[:2]), 8192)
    small = io.make_grid([[np.zeros((64, 64, 3), np.float32)] * 3] * 16, min_cell=256,
                         max_side=8192)
    self.assertEqual(small.shape[:2], (2 + 16 * 258, 2 + 3 * 258))  # Unchanged below the bound.


if __name__ == "__main__":
  absltest.main()
