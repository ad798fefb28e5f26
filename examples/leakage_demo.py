# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Gradient leakage in one screen: attack one client's update under each defence.

A client computes the gradient of one batch (MNIST-subset digits through the
untrained sigmoid LeNet of DLG), applies a defence and shares the result; the
server runs one attack per defence, named in the table's ``attack`` column
and in the PNG's row labels:

* SSGD defences (``ssgd_*``) with one image: adaptive DLG in the defence's
  scope, with the label recovered from the update first (the attack that
  knows the update was normalised);
* every other row, and SSGD with more than one image: Inverting Gradients
  with a per-layer cosine loss (which a per-layer norm cannot hide from).

The script prints PSNR/SSIM/label accuracy per defence and can save a PNG grid
of originals and reconstructions (``--png`` is checked before any attack runs).

    python examples/leakage_demo.py --defences none,ssgd_per_layer,noise_1e-1 --png demo.png
"""

import dataclasses
import sys
import time

# The harness first: Ctrl-C during the imports below also ends in one line (exit 130).
from ssgd_examples import cli

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssgd_optax import attacks
from ssgd_examples import data
from ssgd_examples import models

flag = cli.flag


def load_batch(num_images: int, size: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """``num_images`` test digits resized to ``size x size`` (grey), in [0, 1]."""
  ds = data.load_dataset('mnist_subset', seed=seed)
  x = jax.image.resize(ds.x_test[:num_images], (num_images, size, size, 1), 'linear')
  return jnp.clip(x, 0, 1), jnp.asarray(ds.y_test[:num_images])


def attack_name(defence: str, num_images: int) -> str:
  """The attack :func:`attack_under` runs against ``defence``."""
  if defence.startswith('ssgd_') and num_images == 1:
    return f'adaptive DLG ({defence[len("ssgd_"):]})'
  return 'IG (per-layer cosine)'


def attack_under(defence: str, apply_fn, params, x, y, *, steps: int, seed: int = 0):
  """Observes ``(x, y)`` under ``defence`` and runs the attack :func:`attack_name` names."""
  key = jax.random.key(seed)
  dkey, akey = jax.random.split(key)
  obs = attacks.observe(apply_fn, params, x, y,
                        attacks.make_defence(defence, dkey, len(x)))
  if defence.startswith('ssgd_') and len(x) == 1:
    scope = defence[len('ssgd_'):]
    labels = attacks.recover_labels(obs.update, 10, 1)
    return attacks.adaptive_dlg(apply_fn, obs, key=akey, scope=scope, steps=steps,
                                labels=labels)
  return attacks.inverting_gradients(apply_fn, obs, key=akey, steps=steps, tv=1e-3,
                                     scope='per_layer')


@dataclasses.dataclass(frozen=True)
class Config:
  """The demo's settings; each field is a flag."""
  defences: str = flag('none,ssgd_global,ssgd_per_layer,prune_90,noise_1e-1',
                       'comma-separated defences (see ssgd_optax.attacks.make_defence)')
  images: int = flag(1, 'batch size of the client', check=cli.at_least(1))
  size: int = flag(16, 'image side (pixels)', check=cli.at_least(4))
  steps: int = flag(300, 'attack optimisation steps', check=cli.at_least(1))
  seed: int = flag(0, 'model, defence and attack seed', check=cli.at_least(0))
  png: str | None = cli.output_flag('save originals vs reconstructions here', suffix='.png')
  quiet: bool = flag(False, 'no progress bar')
  verbose: bool = cli.verbose_flag()

  def validate(self) -> None:
    names = self.defences.split(',')
    if not all(names):
      raise ValueError(f'--defences must be comma-separated names; got {self.defences!r}.')
    for name in names:
      try:
        attacks.make_defence(name, jax.random.key(0), self.images)
      except ValueError as e:
        raise ValueError(f'--defences: {e}') from None


def main(argv: list[str] | None = None) -> dict[str, attacks.Scores]:
  a = cli.parse(Config, argv, description=__doc__)
  x, y = load_batch(a.images, a.size, a.seed)
  apply_fn, params = attacks.as_functional(
      models.LeNetZhu((a.size, a.size, 1), 10, rngs=nnx.Rngs(a.seed)))
  results, recs, names = {}, {}, {}
  print(f'{"defence":<16} {"attack":<24} {"PSNR dB":>8} {"SSIM":>6} {"labels":>6} {"s":>6}',
        flush=True)
  defences = a.defences.split(',')
  for d in cli.progress(defences, desc='attacks', unit='defence', quiet=a.quiet):
    t = time.perf_counter()
    names[d] = attack_name(d, len(x))
    res = attack_under(d, apply_fn, params, x, y, steps=a.steps, seed=a.seed)
    s = attacks.score(x, res.inputs, true_labels=y, rec_labels=res.labels)
    results[d] = s
    recs[d] = np.asarray(res.inputs)[attacks.match_batch(x, res.inputs)]
    print(f'{d:<16} {names[d]:<24} {s.psnr.mean():8.2f} {s.ssim.mean():6.3f} '
          f'{s.label_accuracy:6.2f} {time.perf_counter() - t:6.1f}', flush=True)
  if a.png:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    rows = {'original': np.asarray(x), **recs}
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.2 * len(x) + 2.5, 1.1 * len(rows)),
                             squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
      for c in range(len(x)):
        axes[r, c].imshow(imgs[c, ..., 0], cmap='gray', vmin=0, vmax=1)
        axes[r, c].set_xticks([])
        axes[r, c].set_yticks([])
      label = name if name == 'original' else f'{name}\n{names[name]}'
      axes[r, 0].set_ylabel(label, rotation=0, ha='right', va='center', fontsize=8)
    fig.tight_layout()
    # bbox_inches='tight' grows the canvas to the labels, so none is clipped.
    fig.savefig(a.png, dpi=100, bbox_inches='tight')
    plt.close(fig)
    print('wrote', a.png)
  return results


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
