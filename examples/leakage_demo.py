# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Gradient leakage in one screen: attack one client's update under each defence.

A client computes the gradient of one batch (MNIST-subset digits through the
untrained sigmoid LeNet of DLG), applies a defence and shares the result; the
server runs Inverting Gradients (per-layer cosine, which SSGD cannot hide
from) and, for SSGD, adaptive DLG. The script prints PSNR/SSIM/label accuracy
per defence and can save a PNG grid of originals and reconstructions.

    python examples/leakage_demo.py --defences none,ssgd_per_layer,noise_1e-1 --png demo.png
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssgd_optax import attacks
from ssgd_optax import data
from ssgd_optax.attacks import models


def load_batch(num_images: int, size: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """``num_images`` test digits resized to ``size x size`` (grey), in [0, 1]."""
  ds = data.load_dataset('mnist_subset', seed=seed)
  x = jax.image.resize(ds.x_test[:num_images], (num_images, size, size, 1), 'linear')
  return jnp.clip(x, 0, 1), jnp.asarray(ds.y_test[:num_images])


def attack_under(defence: str, apply_fn, params, x, y, *, steps: int, seed: int = 0):
  """Observes ``(x, y)`` under ``defence`` and runs the strongest fitting attack."""
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


def main(argv: list[str] | None = None) -> dict[str, attacks.Scores]:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--defences', default='none,ssgd_global,ssgd_per_layer,prune_90,noise_1e-1')
  p.add_argument('--images', type=int, default=1, help='batch size of the client')
  p.add_argument('--size', type=int, default=16)
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--png', default=None, help='save originals vs reconstructions here')
  a = p.parse_args(argv)
  x, y = load_batch(a.images, a.size, a.seed)
  apply_fn, params = models.as_functional(
      models.LeNetZhu((a.size, a.size, 1), 10, rngs=nnx.Rngs(a.seed)))
  results, recs = {}, {}
  print(f'{"defence":<16} {"PSNR dB":>8} {"SSIM":>6} {"labels":>6} {"s":>6}')
  for d in a.defences.split(','):
    t = time.perf_counter()
    res = attack_under(d, apply_fn, params, x, y, steps=a.steps, seed=a.seed)
    s = attacks.score(x, res.inputs, true_labels=y, rec_labels=res.labels)
    results[d] = s
    recs[d] = np.asarray(res.inputs)[attacks.match_batch(x, res.inputs)]
    print(f'{d:<16} {s.psnr.mean():8.2f} {s.ssim.mean():6.3f} {s.label_accuracy:6.2f} '
          f'{time.perf_counter() - t:6.1f}')
  if a.png:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = {'original': np.asarray(x), **recs}
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.2 * len(x) + 1, 1.1 * len(rows)),
                             squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
      for c in range(len(x)):
        axes[r, c].imshow(imgs[c, ..., 0], cmap='gray', vmin=0, vmax=1)
        axes[r, c].set_xticks([])
        axes[r, c].set_yticks([])
      axes[r, 0].set_ylabel(name, rotation=0, ha='right', va='center', fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png, dpi=100)
    plt.close(fig)
    print('wrote', a.png)
  return results


if __name__ == '__main__':
  main()
