"""Every notebook in notebooks/ runs top to bottom, headless (nbclient), on
its tiny settings (ROSETTA_NOTEBOOK_TINY=1), and fails on any error.

The kernel is this interpreter (the venv's python), from a kernelspec
written into a temporary JUPYTER_PATH; Jupyter, IPython and matplotlib
state goes to the same temporary directory, never to the user's home.
Notebooks write their runs under $ROSETTA_NOTEBOOK_DIR (set to tmp here).

A notebook that needs data sets lists their folders in its metadata
(`"rosetta": {"requires_data": ["xquad", ...]}`); it is skipped, saying
which folder is missing, when $ROSETTA_DATA_DIR (default ../shared/data)
lacks one. Such notebooks have no stand-in corpus by design: retrieval
needs real queries with judged answers.
"""

import glob
import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, 'notebooks', '*.ipynb')))
KERNEL = 'rosetta-test'

# Per notebook: text its executed outputs must contain (beyond "no error").
EXPECTED_OUTPUT = {
    'quickstart.ipynb': ['| en-de | supervised |', '| fr-en | supervised |',
                         'rosetta train', 'image/png', 'train loss'],
    'retrieval.ipynb': ['rosetta train', 'retrieval/dual_encoder_tiny_cpu.gin',
                        '| de -> en | dual encoder + CSLS |',
                        '| en -> en | BM25 |', 'N10 skewness', 'image/png',
                        '| de -> en | BM25 + dual encoder (RRF) |',
                        'recall_at_k.png', "'num_shards': 2"],
    'generative_retrieval.ipynb': [
        'rosetta train', 'dsi/xquad_semantic_tiny.gin', 'children of the root',
        'Hits@10', 'constrained: 100.0% valid docids', 'image/png'],
}


def data_dir() -> str:
  """rosetta.data.pipeline.data_dir() without importing it (TensorFlow) here."""
  return os.environ.get('ROSETTA_DATA_DIR', os.path.join(
      os.path.dirname(REPO), 'shared', 'data'))


def missing_data(nb) -> list[str]:
  need = nb.metadata.get('rosetta', {}).get('requires_data', [])
  return [d for d in need if not os.path.isdir(os.path.join(data_dir(), d))]


def test_there_are_notebooks():
  assert {'quickstart.ipynb', 'retrieval.ipynb',
          'generative_retrieval.ipynb'} <= set(map(os.path.basename,
                                                   NOTEBOOKS))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_names_its_data(path):
  """requires_data is a list of folder names (what the skip checks)."""
  need = nbformat.read(path, as_version=4).metadata.get(
      'rosetta', {}).get('requires_data', [])
  assert isinstance(need, list) and all(
      isinstance(d, str) and d and os.sep not in d for d in need), need


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_committed_clean(path):
  """No outputs or execution counts in the repository (clean diffs)."""
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, (
          f'{os.path.basename(path)}: clear the outputs before committing')


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch):
  spec_dir = tmp_path / 'jupyter' / 'kernels' / KERNEL
  spec_dir.mkdir(parents=True)
  (spec_dir / 'kernel.json').write_text(json.dumps({
      'argv': [sys.executable, '-m', 'ipykernel_launcher', '-f',
               '{connection_file}'],
      'display_name': 'Rosetta (test)', 'language': 'python'}))
  for var, sub in (('JUPYTER_PATH', 'jupyter'),
                   ('JUPYTER_DATA_DIR', 'jupyter-data'),
                   ('JUPYTER_CONFIG_DIR', 'jupyter-config'),
                   ('JUPYTER_RUNTIME_DIR', 'jupyter-runtime'),
                   ('IPYTHONDIR', 'ipython'), ('MPLCONFIGDIR', 'mpl')):
    monkeypatch.setenv(var, str(tmp_path / sub))
  env = dict(os.environ)
  env.update({'ROSETTA_NOTEBOOK_TINY': '1',
              'ROSETTA_NOTEBOOK_DIR': str(tmp_path / 'runs'),
              'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3',
              'PYTHONPATH': REPO + os.pathsep + env.get('PYTHONPATH', '')})
  env.pop('XLA_FLAGS', None)  # one CPU device, as a user's machine has
  return env


def _outputs_text(nb) -> str:
  parts = []
  for cell in nb.cells:
    for out in cell.get('outputs', []):
      parts.append(out.get('text', ''))
      for mime, value in out.get('data', {}).items():
        parts.append(mime)
        if mime.startswith('text/'):
          parts.append(value if isinstance(value, str) else ''.join(value))
  return '\n'.join(parts)


# Each execution trains for 10-20 steps in a fresh kernel (~1 min apiece):
# end-to-end runs, kept out of the default suite's 15-minute budget.
@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_headless(path, jupyter_env):
  nb = nbformat.read(path, as_version=4)
  missing = missing_data(nb)
  if missing:
    pytest.skip(f'{os.path.basename(path)} needs {missing} in {data_dir()} '
                '(set ROSETTA_DATA_DIR)')
  client = NotebookClient(
      nb, kernel_name=KERNEL, timeout=900, allow_errors=False,
      resources={'metadata': {'path': os.path.dirname(path)}})
  try:
    client.execute(env=jupyter_env)
  except CellExecutionError as e:
    pytest.fail(f'{os.path.basename(path)} failed:\n{e}', pytrace=False)
  code_cells = [c for c in nb.cells if c.cell_type == 'code']
  assert code_cells and all(c.execution_count for c in code_cells)
  errors = [o for c in code_cells for o in c.outputs
            if o.output_type == 'error']
  assert not errors
  text = _outputs_text(nb)
  for expected in EXPECTED_OUTPUT.get(os.path.basename(path), []):
    assert expected in text, (expected, text[-3000:])
