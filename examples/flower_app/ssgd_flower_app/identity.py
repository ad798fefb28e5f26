# Copyright 2026 The ssgd_optax Authors. Licensed under the Apache License 2.0.
"""A node's identity key for secure aggregation, and the registry of all of them.

Run on each node, once (the private key never leaves it)::

    python -m ssgd_flower_app.identity new --key /var/lib/ssgd/node.key
    # prints the node's public key (hex): send it to whoever keeps the registry

Then, by whoever keeps the registry (not the server operator alone: the
registry is the PKI of the protocol, and a server that can edit it can
impersonate every participant), with one ``ID=HEX`` per participant::

    python -m ssgd_flower_app.identity registry --out registry.json 0=9f3a... 1=07c2... 2=...

and distribute ``registry.json`` to every node out of band. Each SuperNode
then runs with::

    flower-supernode ... --node-config "identity-key='/var/lib/ssgd/node.key' \\
        registry='/var/lib/ssgd/registry.json' record='/var/lib/ssgd/secagg-record.jsonl'"

The node's participant id is the registry entry of its key.
"""

from __future__ import annotations

import argparse
import sys

from ssgd_optax.federated import secure_aggregation as sa


def new_identity(path: str) -> str:
  """Writes a fresh Ed25519 identity key to ``path`` (0600, never overwritten); its public hex."""
  return sa.write_identity(path).hex()


def make_registry(path: str, entries: list[str]) -> dict[int, bytes]:
  """Writes the registry ``{id: public key}`` from ``ID=HEX`` entries to ``path``."""
  registry = {}
  for entry in entries:
    ident, sep, key = entry.partition('=')
    try:
      if not sep:
        raise ValueError
      i, public = int(ident), bytes.fromhex(key)
    except ValueError:
      raise ValueError(f'registry entries are ID=HEX (a participant id and its public key); '
                       f'got {entry!r}.') from None
    if i in registry:
      raise ValueError(f'participant id {i} is given twice.')
    registry[i] = public
  sa.write_registry(path, registry)
  # Read back with the same checks every node applies (ids 0..n-1, 32-byte keys, no repeats).
  return sa.read_registry(path, len(registry))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  sub = parser.add_subparsers(dest='command', required=True)
  new = sub.add_parser('new', help="create this node's identity key; prints its public key")
  new.add_argument('--key', required=True, help='the new private key file (never overwritten)')
  reg = sub.add_parser('registry', help='write the registry from ID=HEX public keys')
  reg.add_argument('--out', required=True, help='the registry file (JSON)')
  reg.add_argument('entries', nargs='+', help='ID=HEX, one per participant 0..N-1')
  a = parser.parse_args(argv)
  try:
    if a.command == 'new':
      print(new_identity(a.key))
    else:
      registry = make_registry(a.out, a.entries)
      print(f'{a.out}: {len(registry)} participants')
  except (OSError, ValueError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  main()
