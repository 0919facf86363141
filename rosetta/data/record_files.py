"""Records streamed from text files through tf.data: TSV, JSONL and
line-aligned file tuples (Moses-style `train.de` + `train.en`).

A `RecordFileSource` is a seqio DataSource whose examples are
`{feature: tf.string}` records read line by line: memory stays flat however
large the files, every line is checked (a bad one names its file and line,
or is skipped and counted under `on_bad_line='skip'`, see
`rosetta.data.bad_input`), and tf.data can checkpoint the reader's position
(exact resume from the saved iterator state). Example, a TSV with a header::

    # pairs.tsv:  en<TAB>de / Hello.<TAB>Hallo. / Thanks!<TAB>Danke!
    src = RecordFileSource({'train': ['data/pairs*.tsv.gz']},
                           Tsv(columns={'en': 'en', 'de': 'de'}, header=True))
    next(src.get_dataset('train', shuffle=False).as_numpy_iterator())
    # {'en': b'Hello.', 'de': b'Hallo.'}

Formats (`columns` / `fields` map an output feature to where it is read):

  Tsv(columns={'src': 0, 'tgt': 1})          by position, 0-based; every
                                             line must have as many columns
                                             as `num_columns` (default: the
                                             file's first line)
  Tsv(columns={'src': 'en'}, header=True)    by the header's column names
  Jsonl(fields={'de': 'translation.de'})     dotted paths into each object
  AlignedLines(features=('de', 'en'))        one file per feature (`shards`
                                             are tuples of paths); files of
                                             different lengths are an error

Sharding and order. A split's files (globs expanded, sorted) are its
shards. With seqio's `ShardInfo` for H hosts, each host reads every H-th
file when there are at least H, otherwise every host reads the files and
keeps every H-th record (flat memory, H times the reading: split a big
corpus into >= H files). With `shuffle=True` the shard order is reshuffled
every epoch from the seed, and shards are interleaved record by record; the
Task's bounded shuffle buffer mixes further. `shuffle=False` reads shards
in order, lines in order.

`.gz` files are decompressed while reading. TextLineDataset splits lines
on '\\n' and drops '\\r' (so CRLF files read as LF ones).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from rosetta.data import bad_input

# Lines checked per call into Python (amortises the call, ~1-2 us a line).
_PARSE_BATCH = 256
_MAX_INTERLEAVE = 16


@dataclasses.dataclass(frozen=True)
class Tsv:
  """Tab-separated records; `columns` maps feature -> position or name."""
  columns: Mapping[str, int | str]
  header: bool = False
  num_columns: int | None = None

  def __post_init__(self):
    if not self.columns:
      raise ValueError('Tsv.columns: name at least one column')
    names = [c for c in self.columns.values() if isinstance(c, str)]
    if names and not self.header:
      raise ValueError(f'Tsv.columns names columns {names} but header=False:'
                       ' name columns by position, or set header=True')

  @property
  def features(self) -> tuple[str, ...]:
    return tuple(self.columns)


@dataclasses.dataclass(frozen=True)
class Jsonl:
  """One JSON object per line; `fields` maps feature -> dotted path."""
  fields: Mapping[str, str]

  @property
  def features(self) -> tuple[str, ...]:
    return tuple(self.fields)


@dataclasses.dataclass(frozen=True)
class AlignedLines:
  """Line i of each file is one record (Moses / OPUS file pairs)."""
  features: tuple[str, ...]


Format = Tsv | Jsonl | AlignedLines


def open_text(path: str):
  """A binary file object, decompressed when the name ends in .gz."""
  f = tf.io.gfile.GFile(path, 'rb')
  return gzip.GzipFile(fileobj=f) if path.endswith('.gz') else f


def first_line(path: str) -> str:
  try:
    with open_text(path) as f:
      raw = f.readline()
  except (OSError, EOFError) as e:
    raise bad_input.BadInputError(path, 0, f'unreadable ({e})') from None
  return bad_input.decode(path, 1, raw.rstrip(b'\n').rstrip(b'\r'))


def count_lines(path: str) -> int:
  """Lines of a file (a last line without its newline counts)."""
  lines, last = 0, b'\n'
  with open_text(path) as f:
    while chunk := f.read(1 << 22):
      lines += chunk.count(b'\n')
      last = chunk[-1:]
  return lines + (last != b'\n')


def expand(patterns: str | Sequence[str], what: str) -> list[str]:
  """Files matching glob patterns, sorted within each pattern, in pattern
  order; a pattern matching nothing is an error naming it."""
  patterns = [patterns] if isinstance(patterns, str) else list(patterns)
  out = []
  for p in patterns:
    found = sorted(tf.io.gfile.glob(p)) if any(c in p for c in '*?[') else (
        [p] if tf.io.gfile.exists(p) else [])
    if not found:
      raise FileNotFoundError(f'{what}: no file matches {p!r}')
    out += found
  return out


def rows(ds: tf.data.Dataset) -> Iterator[dict[str, Any]]:
  """`ds.as_numpy_iterator()`, where a bad line raises its `BadInputError`
  (not the TensorFlow error that carried it)."""
  it = ds.as_numpy_iterator()
  while True:
    try:
      yield next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      bad_input.reraise(e)
      raise


def json_field(obj: Any, path: str):
  for key in path.split('.'):
    if not isinstance(obj, dict) or key not in obj:
      return None
    obj = obj[key]
  return obj


class _Parser:
  """Checks one batch of lines of one shard in Python (via numpy_function).

  `call(method)` returns the error text (b'' if none) and one bytes array
  per feature holding the good records. An error is returned, not raised:
  a Python exception inside numpy_function reaches the log as a traceback,
  an in-graph assertion as one line (and `bad_input.reraise` restores it).
  """

  def __init__(self, fmt: Format, policy: str):
    self.fmt, self.policy = fmt, policy

  def call(self, method):
    def fn(*args):
      try:
        return [np.array(b'', dtype=object), *method(*args)]
      except bad_input.BadInputError as e:
        return [np.array(str(e).encode(), dtype=object),
                *[np.array([], dtype=object) for _ in self.fmt.features]]
    return fn

  def _keep(self, out, parse) -> None:
    """Appends the texts `parse()` returns to `out`, one list per feature;
    a `BadInputError` it raises goes through the policy (raise or count)."""
    try:
      row = parse()
    except bad_input.BadInputError as e:
      bad_input.handle(self.policy, e.path, e.line, e.reason)
      return
    for o, t in zip(out, row):
      o.append(t.encode())

  @staticmethod
  def _text(path, line, raw, empty_reason) -> str:
    text = bad_input.decode(path, line, raw).strip()
    if not text:
      raise bad_input.BadInputError(path, line, empty_reason)
    return text

  def _tsv_row(self, path, line, raw, columns, expected) -> list[str]:
    cells = raw.split(b'\t')
    if len(cells) != expected:
      raise bad_input.BadInputError(
          path, line, f'expected {expected} tab-separated columns, found '
          f'{len(cells)}')
    return [self._text(path, line, cells[c], f'empty {f!r} (column {c + 1})')
            for f, c in zip(self.fmt.features, columns)]

  def _json_row(self, path, line, raw) -> list[str]:
    def bad(reason):
      return bad_input.BadInputError(path, line, reason)
    try:
      obj = json.loads(bad_input.decode(path, line, raw))
    except json.JSONDecodeError as e:
      raise bad(f'not valid JSON ({e.msg} at column {e.colno})') from None
    if not isinstance(obj, dict):
      raise bad(f'expected a JSON object, found {type(obj).__name__}')
    row = []
    for field in self.fmt.fields.values():
      value = json_field(obj, field)
      if value is None:
        raise bad(f'no field {field!r}')
      if not isinstance(value, str):
        raise bad(f'field {field!r} is {type(value).__name__}, expected a '
                  'string')
      if not value.strip():
        raise bad(f'empty field {field!r}')
      row.append(value.strip())
    return row

  def tsv(self, path, columns, expected, linenos, lines):
    path, columns = path.decode(), columns.tolist()
    out = [[] for _ in self.fmt.features]
    for line, raw in zip(linenos.tolist(), lines.tolist()):
      self._keep(out, lambda: self._tsv_row(path, line, raw, columns,
                                            expected))
    return [np.array(o, dtype=object) for o in out]

  def jsonl(self, path, linenos, lines):
    path = path.decode()
    out = [[] for _ in self.fmt.features]
    for line, raw in zip(linenos.tolist(), lines.tolist()):
      self._keep(out, lambda: self._json_row(path, line, raw))
    return [np.array(o, dtype=object) for o in out]

  def aligned(self, paths, linenos, ended, lines):
    paths = [p.decode() for p in paths.tolist()]
    out = [[] for _ in self.fmt.features]
    for i, line in enumerate(linenos.tolist()):
      flags = ended[:, i].tolist()
      if all(flags):
        continue  # the end of all files together: aligned
      if any(flags):
        short = [p for p, f in zip(paths, flags) if f]
        longer = [p for p, f in zip(paths, flags) if not f]
        # Not skippable: every later line would be misaligned.
        bad_input.handle('error', short[0], 0,
                         f'has {line - 1} lines but {longer[0]} has more: '
                         'the files are not line-aligned')
      self._keep(out, lambda: [self._text(p, line, lines[k, i], 'empty line')
                               for k, p in enumerate(paths)])
    return [np.array(o, dtype=object) for o in out]


class RecordFileSource(seqio.DataSource):
  """Streams `{feature: tf.string}` records from files, split by split.

  `split_files`: {split: patterns}; for `AlignedLines`, {split: [(path per
  feature), ...]} or patterns whose matches are paired by a caller (see
  `rosetta.data.parallel_corpus`).
  """

  def __init__(self, split_files: Mapping[str, Any], fmt: Format, *,
               on_bad_line: str = 'error', description: str = ''):
    self._split_files = dict(split_files)
    self.format = fmt
    self.on_bad_line = bad_input.check_policy(on_bad_line)
    self._description = description or repr(self._split_files)
    self._shards: dict[str, list[tuple[str, ...]]] = {}
    self._columns: dict[str, tuple[list[list[int]], list[int]]] = {}
    self._counts: dict[str, int] = {}
    super().__init__(splits=tuple(self._split_files),
                     num_input_examples=None, caching_permitted=True)

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return True  # get_dataset shards by file or by record itself

  @property
  def output_features(self) -> tuple[str, ...]:
    return self.format.features

  def shards(self, split: str) -> list[tuple[str, ...]]:
    """The split's shards: one tuple of paths each (one path, or one per
    feature for AlignedLines), in reading order."""
    if split not in self._split_files:
      raise ValueError(f'{self._description}: no split {split!r}; splits: '
                       f'{sorted(self._split_files)}')
    if split not in self._shards:
      spec = self._split_files[split]
      what = f'{self._description} split {split!r}'
      if isinstance(self.format, AlignedLines):
        shards = [tuple(s) for s in spec]
        for s in shards:
          if len(s) != len(self.format.features):
            raise ValueError(f'{what}: {s} names {len(s)} files for features'
                             f' {self.format.features}')
          for p in s:
            expand(p, what)
      else:
        shards = [(p,) for p in expand(spec, what)]
      self._shards[split] = shards
    return self._shards[split]

  def list_shards(self, split: str) -> list[str]:
    return [s[0] for s in self.shards(split)]

  def count_records(self, split: str) -> int:
    """Lines of the split (headers excluded; bad lines included): one pass
    over the files, counting newlines, remembered. For mixture rates; not
    `num_input_examples`, which would make seqio cache a small split in
    memory and freeze its per-epoch order."""
    if split not in self._counts:
      total = 0
      for shard in self.shards(split):
        total += count_lines(shard[0]) - int(
            isinstance(self.format, Tsv) and self.format.header)
      self._counts[split] = total
    return self._counts[split]

  def _tsv_columns(self, split: str) -> tuple[list[list[int]], list[int]]:
    """Per shard: column positions of the features and the expected column
    count (from the header, `num_columns` or the file's first line)."""
    if split not in self._columns:
      positions, counts = [], []
      for (path,) in self.shards(split):
        fmt = self.format
        head = first_line(path).split('\t')
        if fmt.header:
          index = {name: i for i, name in enumerate(head)}
          cols = []
          for feature, col in fmt.columns.items():
            if isinstance(col, str) and col not in index:
              raise bad_input.BadInputError(
                  path, 1, f'header has no column {col!r} (for {feature!r}); '
                  f'columns: {head}')
            cols.append(index[col] if isinstance(col, str) else col)
        else:
          cols = list(fmt.columns.values())
        expected = fmt.num_columns or len(head)
        for feature, c in zip(fmt.features, cols):
          if not 0 <= c < expected:
            raise bad_input.BadInputError(
                path, 1, f'column {c} (for {feature!r}) is outside the '
                f'{expected} columns of the file')
        positions.append(cols)
        counts.append(expected)
      self._columns[split] = positions, counts
    return self._columns[split]

  def _read_shard(self, split: str, index: tf.Tensor) -> tf.data.Dataset:
    shards = self.shards(split)
    parser = _Parser(self.format, self.on_bad_line)
    features = self.format.features

    def lines_of(k):
      paths = tf.constant([s[k] for s in shards])
      gz = tf.constant(['GZIP' if s[k].endswith('.gz') else ''
                        for s in shards])
      return tf.data.TextLineDataset(tf.gather(paths, index),
                                     compression_type=tf.gather(gz, index))

    def unpack(outputs):
      error, arrays = outputs[0], outputs[1:]
      with tf.control_dependencies([tf.debugging.Assert(
          tf.equal(error, b''), [error], summarize=1)]):
        arrays = [tf.identity(a) for a in arrays]
      out = {}
      for f, a in zip(features, arrays):
        a.set_shape([None])
        out[f] = a
      return out

    if isinstance(self.format, AlignedLines):
      k = len(features)
      ends = tuple(lines_of(i).map(lambda l: (l, False)).concatenate(
          tf.data.Dataset.from_tensors((tf.constant(b''), True)))
                   for i in range(k))
      paths = tf.gather(tf.constant([list(s) for s in shards]), index)

      def parse(n, rows):
        linenos = n + 1
        ended = tf.stack([r[1] for r in rows])
        lines = tf.stack([r[0] for r in rows])
        return unpack(tf.numpy_function(
            parser.call(parser.aligned), [paths, linenos, ended, lines],
            [tf.string] * (k + 1), stateful=False))
      return (tf.data.Dataset.zip(ends).enumerate().batch(_PARSE_BATCH)
              .map(parse).unbatch())

    path = tf.gather(tf.constant([s[0] for s in shards]), index)
    lines = lines_of(0).enumerate(start=1)
    if isinstance(self.format, Tsv):
      if self.format.header:
        lines = lines.skip(1)
      positions, counts = self._tsv_columns(split)
      cols = tf.gather(tf.constant(positions, tf.int64), index)
      expected = tf.gather(tf.constant(counts, tf.int64), index)

      def parse(linenos, batch):
        return unpack(tf.numpy_function(
            parser.call(parser.tsv), [path, cols, expected, linenos, batch],
            [tf.string] * (len(features) + 1), stateful=False))
    else:
      def parse(linenos, batch):
        return unpack(tf.numpy_function(
            parser.call(parser.jsonl), [path, linenos, batch],
            [tf.string] * (len(features) + 1), stateful=False))
    return lines.batch(_PARSE_BATCH).map(parse).unbatch()

  def get_dataset(self, split: str = 'train', shuffle: bool = True,
                  seed: int | None = None,
                  shard_info: seqio.ShardInfo | None = None,
                  *, sequence_length=None, use_cached: bool = False,
                  num_epochs: int | None = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs  # seqio's Task applies them
    n = len(self.shards(split))
    if isinstance(self.format, Tsv):
      self._tsv_columns(split)  # header / column errors before reading
    ids = tf.data.Dataset.range(n)
    by_file = shard_info is not None and n >= shard_info.num_shards > 1
    if by_file:
      ids = ids.shard(shard_info.num_shards, shard_info.index)
    local = len(range(shard_info.index, n, shard_info.num_shards)) if (
        by_file) else n
    if shuffle:
      ids = ids.shuffle(max(local, 1), seed=seed,
                        reshuffle_each_iteration=True)
    ds = ids.interleave(
        lambda i: self._read_shard(split, i),
        cycle_length=max(1, min(local, _MAX_INTERLEAVE)) if shuffle else 1,
        block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if shard_info is not None and shard_info.num_shards > 1 and not by_file:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    options = tf.data.Options()
    # The parsers keep no state between calls: the iterator may be saved.
    options.experimental_external_state_policy = (
        tf.data.experimental.ExternalStatePolicy.IGNORE)
    return ds.with_options(options)

  def __repr__(self):
    return f'RecordFileSource({self._description})'
