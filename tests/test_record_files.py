"""Streamed record files (TSV, JSONL, Moses pairs): exact records, exact
messages for every bad-input case, the skip policy's counts, per-host
shards, seeded per-epoch order and exact resume from the iterator state."""

import gzip
import os

import pytest
import seqio
import tensorflow as tf

from rosetta.data import bad_input
from rosetta.data import record_files as rf


def write(path, text, mode='w'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  opener = gzip.open if str(path).endswith('.gz') else open
  with opener(path, mode) as f:
    f.write(text)
  return str(path)


def read(source, split='train', **kw):
  kw.setdefault('shuffle', False)
  return list(rf.rows(source.get_dataset(split, **kw)))


def texts(rows, key):
  return [r[key].decode() for r in rows]


@pytest.fixture(autouse=True)
def clear_skips():
  bad_input.SKIPPED.clear()
  yield
  bad_input.SKIPPED.clear()


def test_tsv_by_position_and_by_header(tmp_path):
  p = write(tmp_path / 'a.tsv', '1\tHello.\tHallo.\n2\tThanks!\tDanke!\n')
  src = rf.RecordFileSource({'train': p}, rf.Tsv({'en': 1, 'de': 2}))
  assert read(src) == [{'en': b'Hello.', 'de': b'Hallo.'},
                       {'en': b'Thanks!', 'de': b'Danke!'}]
  h = write(tmp_path / 'h.tsv.gz', 'de\ten\nHallo.\tHello.\r\nJa\tYes\n',
            'wt')
  src = rf.RecordFileSource({'train': h}, rf.Tsv({'en': 'en', 'de': 'de'},
                                                 header=True))
  assert read(src) == [{'en': b'Hello.', 'de': b'Hallo.'},
                       {'en': b'Yes', 'de': b'Ja'}]


def test_globs_read_files_in_sorted_order(tmp_path):
  for name, text in [('b.tsv', 'b1\tB1\n'), ('a.tsv', 'a1\tA1\na2\tA2\n')]:
    write(tmp_path / 'd' / name, text)
  src = rf.RecordFileSource({'train': str(tmp_path / 'd' / '*.tsv')},
                            rf.Tsv({'x': 0, 'y': 1}))
  assert texts(read(src), 'x') == ['a1', 'a2', 'b1']
  with pytest.raises(FileNotFoundError, match=r"no file matches '.*nope\*'"):
    read(rf.RecordFileSource({'train': str(tmp_path / 'nope*')},
                             rf.Tsv({'x': 0})))


def test_count_records_for_mixture_rates(tmp_path):
  write(tmp_path / 'a.tsv.gz', 'en\tde\nx\ty\nx\ty\n', 'wt')
  write(tmp_path / 'b.tsv.gz', 'en\tde\nx\ty', 'wt')  # no final newline
  src = rf.RecordFileSource({'train': str(tmp_path / '*.tsv.gz')},
                            rf.Tsv({'en': 'en'}, header=True))
  assert src.count_records('train') == 3


def test_jsonl_dotted_fields(tmp_path):
  p = write(tmp_path / 'x.jsonl',
            '{"translation": {"de": "Hallo", "en": "Hello"}, "id": 1}\n'
            '{"translation": {"de": " Ja ", "en": "Yes"}}\n')
  src = rf.RecordFileSource({'train': p}, rf.Jsonl(
      {'en': 'translation.en', 'de': 'translation.de'}))
  assert read(src) == [{'en': b'Hello', 'de': b'Hallo'},
                       {'en': b'Yes', 'de': b'Ja'}]


def test_moses_pairs_and_their_length_mismatch_either_way(tmp_path):
  de = write(tmp_path / 'train.de', 'Hallo\nDanke\nJa\n')
  en = write(tmp_path / 'train.en', 'Hello\nThanks\n')
  ok = write(tmp_path / 'ok.en', 'Hello\nThanks\nYes\n')
  fmt = rf.AlignedLines(('de', 'en'))
  assert read(rf.RecordFileSource({'train': [(de, ok)]}, fmt)) == [
      {'de': b'Hallo', 'en': b'Hello'}, {'de': b'Danke', 'en': b'Thanks'},
      {'de': b'Ja', 'en': b'Yes'}]
  with pytest.raises(bad_input.BadInputError) as e:
    read(rf.RecordFileSource({'train': [(de, en)]}, fmt))
  assert str(e.value) == (f'{en}: has 2 lines but {de} has more: the files '
                          'are not line-aligned')
  with pytest.raises(bad_input.BadInputError) as e:
    read(rf.RecordFileSource({'train': [(en, de)]}, rf.AlignedLines(
        ('en', 'de')), on_bad_line='skip'))  # never skippable
  assert 'has 2 lines but' in str(e.value)


BAD_CASES = [
    # (format, file text, expected message after 'path:')
    (rf.Tsv({'a': 0, 'b': 1}), 'x\ty\nx\ty\tz\n',
     '2: expected 2 tab-separated columns, found 3'),
    (rf.Tsv({'a': 0, 'b': 1}), 'x\ty\n \ty\n', "2: empty 'a' (column 1)"),
    (rf.Tsv({'a': 0, 'b': 1}), b'x\ty\nx\t\xff\xfe\n',
     "2: not valid UTF-8 (invalid start byte at byte 0: b'\\xff\\xfe')"),
    (rf.Jsonl({'a': 'a'}), '{"a": "x"}\n{"a": \n',
     '2: not valid JSON (Expecting value at column 7)'),
    (rf.Jsonl({'a': 'a'}), '{"a": "x"}\n["a"]\n',
     '2: expected a JSON object, found list'),
    (rf.Jsonl({'a': 'a.b'}), '{"a": {"b": "x"}}\n{"a": {"c": "x"}}\n',
     "2: no field 'a.b'"),
    (rf.Jsonl({'a': 'a'}), '{"a": "x"}\n{"a": 3}\n',
     "2: field 'a' is int, expected a string"),
    (rf.Jsonl({'a': 'a'}), '{"a": "x"}\n{"a": "  "}\n', "2: empty field 'a'"),
]


@pytest.mark.parametrize('fmt,text,message', BAD_CASES)
def test_each_bad_line_is_named_or_skipped_and_counted(tmp_path, fmt, text,
                                                       message):
  path = str(tmp_path / ('f.jsonl' if isinstance(fmt, rf.Jsonl) else 'f.tsv'))
  write(path, text, 'wb' if isinstance(text, bytes) else 'w')
  with pytest.raises(bad_input.BadInputError) as e:
    read(rf.RecordFileSource({'train': path}, fmt))
  assert str(e.value) == f'{path}:{message}'
  rows = read(rf.RecordFileSource({'train': path}, fmt, on_bad_line='skip'))
  assert len(rows) == 1
  report = bad_input.SKIPPED.report()
  assert report['skipped'] == 1
  assert report['examples'] == [f'{path}:{message}']


def test_skips_are_counted_once_across_epochs(tmp_path):
  p = write(tmp_path / 'f.tsv', 'a\tb\nbad\nc\td\n')
  src = rf.RecordFileSource({'train': p}, rf.Tsv({'x': 0, 'y': 1},
                                                 num_columns=2),
                            on_bad_line='skip')
  ds = src.get_dataset('train', shuffle=False).repeat(3)
  assert len(list(rf.rows(ds))) == 6
  assert bad_input.SKIPPED.report()['files'] == {
      p: {'expected 2 tab-separated columns, found 1': 1}}


def test_header_and_policy_errors(tmp_path):
  p = write(tmp_path / 'h.tsv', 'en\tde\nHello\tHallo\n')
  with pytest.raises(bad_input.BadInputError,
                     match=r"h.tsv:1: header has no column 'fr' \(for 'x'\)"):
    read(rf.RecordFileSource({'train': p}, rf.Tsv({'x': 'fr'}, header=True)))
  with pytest.raises(ValueError, match='header=False'):
    rf.Tsv({'x': 'fr'})
  with pytest.raises(ValueError, match=r"on_bad_line='drop': expected one "
                     r"of \('error', 'skip'\)"):
    rf.RecordFileSource({'train': p}, rf.Tsv({'x': 0}), on_bad_line='drop')
  with pytest.raises(bad_input.BadInputError,
                     match='column 5 .* outside the 2 columns'):
    read(rf.RecordFileSource({'train': p}, rf.Tsv({'x': 5})))


def numbered_files(tmp_path, n_files, lines):
  paths = []
  for f in range(n_files):
    paths.append(write(tmp_path / f'part-{f}.tsv', ''.join(
        f'f{f}l{i}\tx\n' for i in range(lines))))
  return str(tmp_path / 'part-*.tsv')


def test_each_host_reads_its_own_files_or_every_nth_record(tmp_path):
  pattern = numbered_files(tmp_path / 'many', 3, 2)
  src = rf.RecordFileSource({'train': pattern}, rf.Tsv({'x': 0, 'y': 1}))
  hosts = [texts(read(src, shard_info=seqio.ShardInfo(i, 2)), 'x')
           for i in range(2)]
  assert hosts == [['f0l0', 'f0l1', 'f2l0', 'f2l1'], ['f1l0', 'f1l1']]
  single = rf.RecordFileSource({'train': numbered_files(tmp_path / 'one', 1,
                                                        5)},
                               rf.Tsv({'x': 0, 'y': 1}))
  hosts = [texts(read(single, shard_info=seqio.ShardInfo(i, 2)), 'x')
           for i in range(2)]
  assert hosts == [['f0l0', 'f0l2', 'f0l4'], ['f0l1', 'f0l3']]


def test_seeded_order_changes_per_epoch_and_resumes_exactly(tmp_path):
  src = rf.RecordFileSource({'train': numbered_files(tmp_path, 4, 3)},
                            rf.Tsv({'x': 0, 'y': 1}))

  def stream():
    return src.get_dataset('train', shuffle=True, seed=7).repeat(2)
  a = texts(list(rf.rows(stream())), 'x')
  assert a == texts(list(rf.rows(stream())), 'x')     # deterministic
  assert sorted(a[:12]) == sorted(a[12:]) and a[:12] != a[12:]  # per epoch
  it = iter(stream())
  head = [next(it)['x'].numpy().decode() for _ in range(5)]
  prefix = str(tmp_path / 'ckpt' / 'it')
  tf.train.Checkpoint(iterator=it).write(prefix)
  fresh = iter(stream())
  tf.train.Checkpoint(iterator=fresh).read(prefix).assert_consumed()
  rest = [r['x'].numpy().decode() for r in fresh]
  assert head + rest == a
