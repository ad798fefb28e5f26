# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""Quickstart: train a small Flax NNX MLP with SSGD on scikit-learn's digits.

    python examples/quickstart.py                 # seconds on a CPU
    python examples/quickstart.py --scope per_layer --epochs 5

Prints the test accuracy. The optimizer is ``ssgd_optax.ssgd``: every update
is rescaled to unit norm (here per layer) before momentum and the learning
rate, so the norm of each shared gradient carries no information.
"""

import dataclasses
import sys

# The harness first: Ctrl-C during the imports below also ends in one line (exit 130).
from ssgd_examples import cli

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import ssgd_optax

flag = cli.flag
# load_digits has 1,797 images; the last 4/5 of the split train.
TRAIN_SIZE = 1797 - 1797 // 5


class MLP(nnx.Module):
  """64 -> hidden -> hidden -> 10, ReLU."""

  def __init__(self, hidden: int, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(64, hidden, rngs=rngs)
    self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


def load(seed: int):
  """Digits as float32 in [0, 1], a fixed 80/20 split."""
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  perm = np.random.default_rng(seed).permutation(len(x))
  x, y = x[perm], y[perm].astype(np.int32)
  n_test = len(x) // 5
  return (x[n_test:], y[n_test:]), (x[:n_test], y[:n_test])


def loss_fn(model, x, y):
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), -1) == y)


def train(*, scope='per_layer', epochs=30, batch_size=64, learning_rate=0.2, momentum=0.9,
          hidden=128, seed=0, verbose=True):
  """Trains the MLP and returns its test accuracy."""
  (x_train, y_train), (x_test, y_test) = load(seed)
  steps_per_epoch = len(x_train) // batch_size
  schedule = optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch)
  model = MLP(hidden, rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(
      model, ssgd_optax.ssgd(schedule, scope=scope, momentum=momentum), wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  for epoch in range(epochs):
    perm = rng.permutation(len(x_train))
    for i in range(steps_per_epoch):
      idx = perm[i * batch_size:(i + 1) * batch_size]
      loss = train_step(model, optimizer, x_train[idx], y_train[idx])
    if verbose and (epoch + 1) % 10 == 0:
      print(f'epoch {epoch + 1:3d}  loss {float(loss):.4f}  '
            f'test accuracy {float(accuracy(model, x_test, y_test)):.4f}')
  return float(accuracy(model, x_test, y_test))


@dataclasses.dataclass(frozen=True)
class Config:
  """The quickstart's settings; each field is a flag (``batch_size`` -> ``--batch-size``)."""
  scope: str = flag('per_layer', 'SSGD normalisation scope', choices=ssgd_optax.SCOPES)
  epochs: int = flag(30, 'passes over the training set', check=cli.at_least(1))
  batch_size: int = flag(64, f'batch size, at most the {TRAIN_SIZE} training images',
                         check=cli.in_range(1, TRAIN_SIZE))
  learning_rate: float = flag(0.2, 'peak learning rate (cosine decay)',
                              check=cli.finite(positive=True))
  momentum: float = flag(0.9, 'heavy-ball momentum', check=cli.in_range(0, 1, hi_open=True))
  seed: int = flag(0, 'split, initialisation and data-order seed', check=cli.at_least(0))
  quiet: bool = flag(False, 'print only the result line')
  verbose: bool = cli.verbose_flag()


def main(argv=None):
  c = cli.parse(Config, argv, description=__doc__)
  acc = train(scope=c.scope, epochs=c.epochs, batch_size=c.batch_size,
              learning_rate=c.learning_rate, momentum=c.momentum, seed=c.seed,
              verbose=not c.quiet)
  print(f'ssgd (scope={c.scope}) on digits: test accuracy {acc:.4f} '
        f'({jax.device_count()} {jax.default_backend()} device(s))')
  return acc


if __name__ == '__main__':
  cli.run(main, sys.argv[1:])
