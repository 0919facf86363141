"""A run's config.gin names configurables by the shortest selector unique
when it was written (`setup.vocabulary` in a dual-encoder run); a process
that has also imported `translation.nmt` (another `setup`) still reads it,
qualified by the config's own imports."""

import gin
import pytest

from rosetta import gin_utils

CONFIG = """import retrieval.dense.pair_tasks
import rosetta.run.runs

setup.vocabulary = 'bytes'
setup.collections = []
task_setup.register_fns = [@setup]
"""


def test_ambiguous_selectors_are_qualified_by_the_config_imports(tmp_path):
  import retrieval.dense.pair_tasks  # noqa: F401  (both `setup`s registered)
  import translation.nmt  # noqa: F401
  path = tmp_path / 'config.gin'
  path.write_text(CONFIG)
  with pytest.raises(KeyError, match="Ambiguous selector .setup."):
    gin.clear_config()
    gin.parse_config(CONFIG)
  assert gin_utils.qualify_selectors(CONFIG).splitlines()[3:6] == [
      "retrieval.dense.pair_tasks.setup.vocabulary = 'bytes'",
      'retrieval.dense.pair_tasks.setup.collections = []',
      'task_setup.register_fns = [@retrieval.dense.pair_tasks.setup]']
  try:
    gin_utils.parse_run_config(str(path))
    assert gin.query_parameter(
        'retrieval.dense.pair_tasks.setup.vocabulary') == 'bytes'
  finally:
    gin.clear_config()
