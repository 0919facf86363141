"""docs/gin_cookbook.md works as written: its files are written out as
given, the gin files parse, the Python snippets run, the tasks and the
mixture they register yield the documented examples, every `rosetta ...`
command parses, and the mixture experiment trains for a few steps."""

import os
import re
import shlex
import subprocess
import sys

import gin
import pytest
import seqio

from rosetta import gin_utils
from rosetta import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COOKBOOK = os.path.join(REPO, 'docs', 'gin_cookbook.md')
CORPUS = {'train': [('Good morning', 'Guten Morgen'), ('Thank you', 'Danke'),
                    ('The house is small', 'Das Haus ist klein')],
          'dev': [('Good night', 'Gute Nacht'), ('Yes', 'Ja')]}


def blocks(lang):
  text = open(COOKBOOK, encoding='utf-8').read()
  return re.findall(rf'```{lang}\n(.*?)```', text, re.S)


def named_files():
  """{relative path: text} for blocks whose first line is `# <path>`."""
  out = {}
  for lang in ('gin', 'python'):
    for b in blocks(lang):
      m = re.match(r'# (\S+\.(?:gin|py))\n', b)
      if m:
        out[m.group(1)] = b
  return out


def commands():
  """Each `rosetta ...` command line of the bash blocks (continuations
  joined, a leading VAR=value dropped) as argv."""
  out = []
  for b in blocks('bash'):
    for line in b.replace('\\\n', ' ').splitlines():
      argv = shlex.split(line)
      while argv and re.fullmatch(r'[A-Z_]+=.*', argv[0]):
        argv = argv[1:]
      if argv and argv[0] == 'rosetta':
        out.append(argv[1:])
  return out


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """The reader's directory: the cookbook's files plus my_corpus/."""
  d = tmp_path_factory.mktemp('cookbook')
  for rel, text in named_files().items():
    os.makedirs(d / os.path.dirname(rel), exist_ok=True)
    (d / rel).write_text(text, encoding='utf-8')
  (d / 'my_corpus').mkdir()
  for split, pairs in CORPUS.items():
    for i, lang in enumerate(('en', 'de')):
      (d / 'my_corpus' / f'{split}.{lang}').write_text(
          ''.join(p[i] + '\n' for p in pairs), encoding='utf-8')
  sys.path.insert(0, str(d))  # `import my_tasks` (PYTHONPATH=. in the doc)
  yield d
  sys.path.remove(str(d))
  gin.clear_config()


def test_cookbook_has_the_snippets():
  files = named_files()
  assert {'my_tasks.py', 'my_experiments/tiny_django_long.gin',
          'my_experiments/my_mixture.gin',
          'my_experiments/nmt_de_fr.gin'} <= set(files)
  assert len(commands()) >= 4


def test_gin_files_parse(workdir, monkeypatch):
  monkeypatch.chdir(workdir)
  parsed = 0
  for rel in named_files():
    if rel.endswith('.gin'):
      gin_utils.parse([rel], ["train.model_dir = 'runs/x'"], finalize=False)
      assert gin.query_parameter('train.task')
      parsed += 1
  assert parsed == 3
  # What the files say is what gin holds.
  gin_utils.parse(['my_experiments/tiny_django_long.gin'], finalize=False)
  assert gin.query_parameter('optimizers.learning_rate_schedule.kind') == \
      'cosine'
  assert gin.query_parameter('train.total_steps') == 2000


def test_commands_parse(workdir, monkeypatch):
  monkeypatch.chdir(workdir)
  for argv in commands():
    args = cli.parse_args(argv)
    gin_utils.parse(args.gin_file, args.gin_bindings, finalize=False)
  # The first command's overrides win over its experiment file.
  args = cli.parse_args(commands()[0])
  gin_utils.parse(args.gin_file, args.gin_bindings, finalize=False)
  assert gin.query_parameter('train.total_steps') == 500
  assert gin.query_parameter('train.model_dir') == 'runs/tiny_django'
  assert gin.query_parameter('train.task_feature_lengths') == {
      'inputs': 48, 'targets': 48}


def test_python_snippets_run(workdir, monkeypatch):
  monkeypatch.chdir(workdir)
  unnamed = [b for b in blocks('python') if not b.startswith('# ')]
  assert unnamed
  for code in unnamed:
    exec(compile(code, COOKBOOK, 'exec'), {})  # noqa: S102 (the doc's own code)


def test_tasks_and_mixture_yield_examples(workdir):
  import my_tasks  # noqa: F401  (the cookbook's module)
  task = seqio.get_mixture_or_task('my_corpus_translate_en_de_bytes')
  got = [(ex['inputs_pretokenized'].decode(),
          ex['targets_pretokenized'].decode())
         for ex in task.get_dataset(None, 'validation', shuffle=False)
         .as_numpy_iterator()]
  assert got == [(f'<2de> {en}', de) for en, de in CORPUS['dev']]
  mix = seqio.get_mixture_or_task('my_mixture_bytes')
  assert sorted(t.name for t in mix.tasks) == sorted(
      my_tasks.DJANGO + ['my_corpus_translate_en_de_bytes'])
  ds = mix.get_dataset({'inputs': 64, 'targets': 64}, split='train',
                       shuffle=True, seed=0)
  tags = {bytes((ex['inputs'][:5] - 3).tolist()).decode()  # ids: byte + 3
          for ex in ds.take(200).as_numpy_iterator()}
  assert tags == {'<2de>', '<2en>', '<2es>'}


@pytest.mark.slow   # end to end; .ci/run runs the slow suite too
def test_mixture_experiment_trains(workdir, tmp_path):
  run_dir = tmp_path / 'run'
  argv = [a for a in commands() if 'my_experiments/my_mixture.gin' in
          ' '.join(a)][0]
  argv = [a for a in argv if not a.startswith('--gin.train.model_dir')]
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONPATH=os.pathsep.join(['.', REPO]))
  env.pop('XLA_FLAGS', None)
  p = subprocess.run(
      [sys.executable, '-m', 'rosetta', *argv,
       f"--gin.train.model_dir='{run_dir}'", '--gin.train.total_steps=3',
       '--gin.train.eval_period=0', '--gin.train.batch_size=8',
       "--gin.train.task_feature_lengths={'inputs': 32, 'targets': 32}"],
      cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  assert 'training my_mixture_bytes for 3 steps' in p.stdout
  assert 'done: step 3' in p.stdout
