"""Options shared by the retrieval commands: multi-process flags and the
corpus / queries spec help."""

from __future__ import annotations

import argparse

from retrieval import collection_files

SPEC_HELP = collection_files.TEXT_SPEC_HELP


def add_distributed(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group(
      'multi-process (one command per process, all with the same options)')
  group.add_argument('--coordinator_address', default=None,
                     help="host:port of process 0 ('auto' on TPU pods and "
                     'most GPU clusters); unset: one process')
  group.add_argument('--num_processes', type=int, default=None)
  group.add_argument('--process_id', type=int, default=None)


def start_distributed(args) -> None:
  """jax.distributed from the flags (nothing when unset)."""
  from rosetta.run import runs  # pylint: disable=import-outside-toplevel
  runs.distributed(args.coordinator_address, args.num_processes,
                   args.process_id)


def positive(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
  return value
