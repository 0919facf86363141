"""Docids: uniqueness, determinism, hierarchical k-means structure (on a
constructed clustered set and on real Cranfield abstracts), the versioned
mapping file, and docid <-> token conversion (also inside tf.data)."""

import collections
import json
import os
import re

import numpy as np
import pytest
import seqio
import tensorflow as tf

from retrieval import datasets
from retrieval.dsi import docids
from retrieval.dsi.docids import DocidMapping, DocidVocabulary

BYTES = seqio.ByteVocabulary()   # 259 ids: 0 PAD, 1 EOS, 2 UNK, 3.. bytes


def clustered_set(seed=0):
  """4 groups x 3 subgroups x 15 points in 8-D: group centres 100 apart,
  subgroup centres 10 apart within a group, points spread 1."""
  rng = np.random.default_rng(seed)
  x, group, sub = [], [], []
  for g in range(4):
    gc = rng.normal(size=8) * 100
    for s in range(3):
      sc = gc + rng.normal(size=8) * 10
      x.append(sc + rng.normal(size=(15, 8)))
      group += [g] * 15
      sub += [3 * g + s] * 15
  order = rng.permutation(len(group))   # no help from the input order
  return (np.concatenate(x)[order], np.array(group)[order],
          np.array(sub)[order])


def digits(docid):
  return tuple(int(d) for d in docid.split('-'))


def test_atomic_and_naive_ids_and_tokens():
  keys = [f'doc{i}' for i in range(300)]
  atomic, naive = docids.atomic_ids(keys), docids.naive_ids(keys)
  assert atomic.ids['doc17'] == naive.ids['doc17'] == '17'
  va, vn = DocidVocabulary(atomic, BYTES), DocidVocabulary(naive, BYTES)
  assert va.encode('17') == [259 + 17] and va.vocab_size == 259 + 300
  assert vn.encode('17') == [ord('1') + 3, ord('7') + 3]
  assert vn.vocab_size == 259
  assert docids.padded_vocab_size(va.vocab_size) == 640
  assert docids.padded_vocab_size(259 + 240) == 512
  for v in (va, vn):
    seqs = v.token_sequences()
    assert len(set(seqs)) == 300
    for key, seq in zip(keys, seqs):
      assert v.decode(list(seq) + [1, 0, 0]) == v.mapping.ids[key]
    # A token sequence that is no docid decodes to ''.
    assert v.decode([259 + 300, 1]) == '' and v.decode([40, 40, 40, 1]) == ''
  with pytest.raises(ValueError, match="'300' is not a docid"):
    va.encode('300')


def test_uniqueness_is_enforced():
  with pytest.raises(ValueError, match="docid '3' is given to both documents "
                     "'a' and 'b'"):
    DocidMapping('atomic', {'a': '3', 'b': '3'})
  with pytest.raises(ValueError, match="document key 'x' is given to both"):
    docids.atomic_ids(['x', 'y', 'x'])
  with pytest.raises(ValueError, match=r"ids\['a'\] = '1-2' is not a "
                     'atomic docid'):
    DocidMapping('atomic', {'a': '1-2'})
  with pytest.raises(ValueError, match='kind must be one of'):
    DocidMapping('random', {'a': '1'})


def test_semantic_ids_follow_the_cluster_hierarchy():
  x, group, sub = clustered_set()
  keys = [f'd{i}' for i in range(len(x))]
  m = docids.semantic_ids(keys, x, k=4, c=10, seed=0)
  ids = [digits(m.ids[k]) for k in keys]
  assert len(set(ids)) == len(ids)
  # The first digit recovers the 4 well-separated groups exactly.
  first = np.array([i[0] for i in ids])
  for g in range(4):
    assert len(set(first[group == g])) == 1
  assert len(set(first)) == 4
  # Groups of 45 > c are clustered again into k = 4 clusters: with 3 true
  # subgroups one is split, but no cluster mixes two subgroups.
  second = [i[:2] for i in ids]
  for prefix in set(second):
    assert len({s for s, p in zip(sub, second) if p == prefix}) == 1
  assert len(set(second)) >= 12
  # Leaves: <= c documents, last digit = position 0..n-1 in the leaf.
  leaves = {}
  for i in ids:
    leaves.setdefault(i[:-1], []).append(i[-1])
  assert all(sorted(v) == list(range(len(v))) and len(v) <= 10
             for v in leaves.values())
  # Prefix-free: no id is a prefix of another (the trie needs no EOS
  # disambiguation, and the depth is bounded).
  as_set = set(ids)
  assert not any(i[:n] in as_set for i in ids for n in range(1, len(i)))
  # Same inputs, same ids (no hidden global random state).
  again = docids.semantic_ids(keys, x, k=4, c=10, seed=0)
  assert again.ids == m.ids
  assert m.params == {'k': 4, 'c': 10, 'seed': 0, 'iterations': 50}


def test_sharing_a_prefix_means_closer_on_a_noisy_set():
  """Less separated data: pairs that share the first j digits are closer
  on average than pairs whose paths split at digit j."""
  rng = np.random.default_rng(1)
  x = np.concatenate([rng.normal(size=(60, 16)) + 3 * rng.normal(size=16)
                      for _ in range(6)])
  m = docids.semantic_ids([str(i) for i in range(len(x))], x, k=3, c=8,
                          seed=2)
  ids = [digits(v) for v in m.ids.values()]
  d = np.linalg.norm(x[:, None] - x[None], axis=-1)
  for j in (1, 2):
    same, split = [], []
    for a in range(len(x)):
      for b in range(a + 1, len(x)):
        if len(ids[a]) > j and len(ids[b]) > j and ids[a][:j - 1] == \
            ids[b][:j - 1]:
          (same if ids[a][j - 1] == ids[b][j - 1] else split).append(d[a, b])
    assert np.mean(same) < 0.9 * np.mean(split), j


def test_degenerate_embeddings_still_give_unique_ids_within_leaf_size():
  x = np.ones((57, 4))                         # k-means cannot split these
  m = docids.semantic_ids([str(i) for i in range(57)], x, k=3, c=5)
  ids = [digits(v) for v in m.ids.values()]
  assert len(set(ids)) == 57
  leaves = {}
  for i in ids:
    leaves.setdefault(i[:-1], []).append(i)
  assert max(len(v) for v in leaves.values()) <= 5


def test_semantic_ids_on_cranfield_group_lexically_similar_abstracts():
  """Real text: lexical TF-IDF embeddings of the 1,400 Cranfield
  abstracts; abstracts in the same top cluster share more content words
  (measured here: Jaccard 0.0125 vs 0.0079)."""
  rs = datasets.cranfield()
  emb = docids.lexical_embeddings(rs.docs, dim=128, seed=0)
  np.testing.assert_array_equal(
      emb, docids.lexical_embeddings(rs.docs, dim=128, seed=0))
  m = docids.semantic_ids(rs.doc_ids, emb, k=10, c=100, seed=0)
  ids = [digits(m.ids[d]) for d in rs.doc_ids]
  assert len(set(ids)) == 1400
  assert max(len(i) for i in ids) <= 4
  # Content words (in < 5% of the abstracts): Jaccard over all words is
  # dominated by 'the', 'of', 'flow'.
  words = [set(re.findall(r'\w+', t.lower())) for t in rs.docs]
  df = collections.Counter(w for ws in words for w in ws)
  words = [{w for w in ws if df[w] < 70} for ws in words]
  rng = np.random.default_rng(0)
  same, diff = [], []
  for a, b in rng.integers(0, 1400, size=(6000, 2)):
    if a != b:
      j = len(words[a] & words[b]) / len(words[a] | words[b])
      (same if ids[a][0] == ids[b][0] else diff).append(j)
  assert np.mean(same) > 1.3 * np.mean(diff), (np.mean(same), np.mean(diff))


def test_mapping_file_round_trip(tmp_path):
  x, _, _ = clustered_set()
  m = docids.semantic_ids([f'd{i}' for i in range(len(x))], x, k=4, c=10)
  path = m.save(str(tmp_path / 'sub' / 'docids.json'))
  assert os.listdir(tmp_path / 'sub') == ['docids.json']   # no temp file
  with open(path) as f:
    record = json.load(f)
  assert (record['format'], record['format_version'], record['kind']) == (
      'rosetta.docids', 1, 'semantic')
  assert record['num_docs'] == len(x) and record['params']['k'] == 4
  loaded = DocidMapping.load(path)
  assert loaded == m and list(loaded.ids) == list(m.ids)   # order kept


@pytest.mark.parametrize('change,match', [
    (lambda r: r.update(format_version=2), 'field "format_version" is 2'),
    (lambda r: r.pop('kind'), "missing field 'kind'"),
    (lambda r: r.update(ids=[1, 2]), "field 'ids' must be a dict"),
    (lambda r: r.update(num_docs=7), 'field "num_docs" is 7 but field "ids" '
     'has 2'),
    (lambda r: r['ids'].update(b='0'), "docid '0' is given to both documents "
     "'a' and 'b'"),
    (lambda r: r.update(format='other'), 'field "format" is \'other\''),
])
def test_loading_a_bad_mapping_names_the_file_and_field(tmp_path, change,
                                                        match):
  path = str(tmp_path / 'm.json')
  DocidMapping('naive', {'a': '0', 'b': '1'}).save(path)
  with open(path) as f:
    record = json.load(f)
  change(record)
  with open(path, 'w') as f:
    json.dump(record, f)
  with pytest.raises(ValueError, match=match) as err:
    DocidMapping.load(path)
  assert path in str(err.value)


def test_docid_vocabulary_in_tf_data():
  m = docids.semantic_ids([str(i) for i in range(30)],
                          np.random.default_rng(0).normal(size=(30, 4)),
                          k=3, c=4)
  v = DocidVocabulary(m, BYTES)
  some = list(m.ids.values())[:5]
  ds = tf.data.Dataset.from_tensor_slices(some).map(v.encode_tf)
  for docid, tokens in zip(some, ds.as_numpy_iterator()):
    assert list(tokens) == v.encode(docid)
    assert min(tokens) >= 259
  batch = tf.ragged.constant([v.encode(d) + [1] for d in some]).to_tensor()
  assert [s.decode() for s in v.decode_tf(batch).numpy()] == some
  bad = tf.data.Dataset.from_tensor_slices(['9-9-9']).map(v.encode_tf)
  with pytest.raises(tf.errors.InvalidArgumentError, match='not a docid'):
    list(bad.as_numpy_iterator())
