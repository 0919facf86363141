"""Real retrieval sets: FLORES-200 bitext mining, XQuAD, Cranfield.

Every loader returns a `RetrievalSet`: parallel tuples of query ids / texts
and document ids / texts, plus TREC-style qrels ``{qid: {doc_id: grade}}``
(grade >= 1 relevant, 0 judged non-relevant). Files come from
`rosetta.data.pipeline.data_dir()` (`$ROSETTA_DATA_DIR`, else ../shared/data).

  FLORES   `flores_mining('deu_Latn')`: 1,012 German sentences as queries
           against the 1,012 English ones; line i matches line i.
           `flores_mining('eng_Latn', 'deu_Latn')` is the other direction
           (`flores_mining_directions('deu_Latn')` gives both). Ids are
           '<lang>:<1-based line>'.
  XQuAD    `xquad('de', corpus='en')`: the 1,190 German questions against
           the 240 English paragraphs; `corpus='de'` the German paragraphs;
           `corpus='pool'` all 2,880 paragraphs of the 12 languages, where
           every language's copy of the question's paragraph is relevant.
           Paragraph ids are '<lang>:<title>_p<j>' (article title + position,
           identical across languages); question ids are XQuAD's own, equal
           in every language. `split='train'|'test'` keeps the questions of
           `xquad_split(qid)`: md5(qid) % 100 < 70 -> train, so a question
           is on the same side in every language.
  Cranfield `cranfield()`: 1,400 abstracts (doc ids '1'..'1400'), 225
           queries renumbered '1'..'225' in file order (the `.I` numbers of
           cran.qry have gaps; cranqrel uses the renumbered ones).

Your own collections (BEIR folders, MS MARCO TSVs) are read into the same
`RetrievalSet` by `retrieval.collection_files`.

Cranfield grades. cranqrel.readme gives Cleverdon's codes, where LOWER is
more relevant: 1 = complete answer, 2 = high relevance, 3 = useful
background, 4 = minimum interest (5 = no interest, never listed). nDCG needs
higher = more relevant, so code c becomes grade 5 - c (1->4, 2->3, 3->2,
4->1). The file also has 225 lines with code -1 (one per query; not in the
readme): they are kept as grade 0, judged non-relevant. The file has 1,837
judgement lines (`wc -l` says 1,836: the last line has no newline), 1,612 of
them relevant. (ir_datasets reads the codes the other way round, 4 = complete
answer; we follow the readme that ships with the data, and
tests/test_bm25.py checks the direction against BM25.)

Malformed input raises ValueError naming the file and the 1-based line (or,
for JSON, the path of the field, e.g. `data[3].paragraphs[2].qas[0].id`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re

from rosetta.data import corpora
from rosetta.data import bad_input
from rosetta.data import text_pairs

XQUAD_LANGUAGES = ('ar', 'de', 'el', 'en', 'es', 'hi', 'ro', 'ru', 'th',
                   'tr', 'vi', 'zh')
FLORES_PIVOT = 'eng_Latn'


@dataclasses.dataclass(frozen=True)
class RetrievalSet:
  """Queries, a corpus and qrels; index i of `docs` is row i of an index."""
  name: str
  query_ids: tuple[str, ...]
  queries: tuple[str, ...]
  doc_ids: tuple[str, ...]
  docs: tuple[str, ...]
  qrels: dict[str, dict[str, int]]

  def __post_init__(self):
    for kind, ids, texts in (('query', self.query_ids, self.queries),
                             ('doc', self.doc_ids, self.docs)):
      if len(ids) != len(texts):
        raise ValueError(f'{self.name}: {len(ids)} {kind} ids but '
                         f'{len(texts)} texts')
      if len(set(ids)) != len(ids):
        raise ValueError(f'{self.name}: duplicate {kind} ids')

  def num_judgements(self) -> int:
    return sum(len(d) for d in self.qrels.values())


def data_root() -> str:
  return corpora.data_dir()


def _lines(path: str) -> list[str]:
  """Decoded lines split on '\\n' only (see rosetta.data.pipeline._read_lines)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such file (data directory: '
                            f'{data_root()}; set ROSETTA_DATA_DIR)')
  return [bad_input.decode(path, i + 1, raw)
          for i, raw in enumerate(text_pairs.read_lines(path))]


# ---------------------------------------------------------------- FLORES ---

def flores_root() -> str:
  return os.path.join(data_root(), 'flores200_devtest')


def flores_languages() -> list[str]:
  """FLORES codes ('deu_Latn', ...) with a devtest file, English included."""
  root = flores_root()
  if not os.path.isdir(root):
    return []
  return sorted(f[:-len('.devtest')] for f in os.listdir(root)
                if f.endswith('.devtest'))


def flores_sentences(lang: str) -> tuple[str, ...]:
  """The devtest sentences of one language; empty lines are errors."""
  return _flores_sentences(flores_root(), lang)


@functools.lru_cache(maxsize=None)   # keyed by the directory: tests move it
def _flores_sentences(root: str, lang: str) -> tuple[str, ...]:
  path = os.path.join(root, f'{lang}.devtest')
  if not os.path.exists(path):
    raise ValueError(f'no FLORES-200 devtest file for {lang!r} ({path}); '
                     f'available: {flores_languages()}')
  out = []
  for i, line in enumerate(_lines(path)):
    text = line.strip()
    if not text:
      raise ValueError(f'{path}:{i + 1}: empty line (FLORES is '
                       'multi-parallel: every line is a sentence)')
    out.append(text)
  return tuple(out)


def flores_mining(source: str, target: str = FLORES_PIVOT) -> RetrievalSet:
  """Bitext mining: each `source` sentence must find its `target` line."""
  src, tgt = flores_sentences(source), flores_sentences(target)
  if len(src) != len(tgt):
    raise ValueError(
        f'FLORES files are not line-aligned: {source} has {len(src)} lines, '
        f'{target} has {len(tgt)} ({flores_root()})')
  qids = tuple(f'{source}:{i + 1}' for i in range(len(src)))
  dids = tuple(f'{target}:{i + 1}' for i in range(len(tgt)))
  return RetrievalSet(f'flores:{source}->{target}', qids, src, dids, tgt,
                      {q: {d: 1} for q, d in zip(qids, dids)})


def flores_mining_directions(lang: str) -> dict[str, RetrievalSet]:
  """Both directions against English: {'xxx->eng_Latn': ..., reverse}."""
  return {f'{lang}->{FLORES_PIVOT}': flores_mining(lang, FLORES_PIVOT),
          f'{FLORES_PIVOT}->{lang}': flores_mining(FLORES_PIVOT, lang)}


# ----------------------------------------------------------------- XQuAD ---

@dataclasses.dataclass(frozen=True)
class XquadParagraph:
  pid: str                          # '<lang>:<title>_p<j>'
  context: str
  question_ids: tuple[str, ...]
  questions: tuple[str, ...]
  # (character offset in `context`, text) of each question's first answer
  answers: tuple[tuple[int, str], ...] = ()


def xquad_root() -> str:
  return os.path.join(data_root(), 'xquad')


def xquad_split(question_id: str) -> str:
  """'train' or 'test': md5 of the id, 70/30; the same in every language."""
  h = int(hashlib.md5(question_id.encode('utf-8')).hexdigest(), 16)
  return 'train' if h % 100 < 70 else 'test'


def _field(obj, key: str, where: str, path: str, kind=str):
  if not isinstance(obj, dict) or key not in obj:
    raise ValueError(f'{path}: {where}: missing field {key!r}')
  value = obj[key]
  if not isinstance(value, kind) or (kind is str and not value.strip()):
    raise ValueError(f'{path}: {where}.{key}: expected a non-empty '
                     f'{kind.__name__}, got {value!r:.80}')
  return value


def xquad_paragraphs(lang: str) -> tuple[XquadParagraph, ...]:
  """The 240 paragraphs of one language, in file order, with questions."""
  if lang not in XQUAD_LANGUAGES:
    raise ValueError(f'unknown XQuAD language {lang!r}; '
                     f'known: {XQUAD_LANGUAGES}')
  return _xquad_paragraphs(xquad_root(), lang)


@functools.lru_cache(maxsize=None)
def _xquad_paragraphs(root: str, lang: str) -> tuple[XquadParagraph, ...]:
  path = os.path.join(root, f'xquad.{lang}.json')
  text = '\n'.join(_lines(path))
  try:
    doc = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}:{e.lineno}:{e.colno}: not valid JSON: '
                     f'{e.msg}') from None
  out, seen_q = [], set()
  for a, article in enumerate(_field(doc, 'data', 'top level', path, list)):
    where = f'data[{a}]'
    title = _field(article, 'title', where, path)
    if re.search(r'\s', title):
      raise ValueError(f'{path}: {where}.title: {title!r} has whitespace '
                       '(it becomes part of TREC ids)')
    for j, par in enumerate(_field(article, 'paragraphs', where, path, list)):
      pw = f'{where}.paragraphs[{j}]'
      raw = _field(par, 'context', pw, path)
      context = raw.strip()
      lead = len(raw) - len(raw.lstrip())   # offsets count from `raw`
      qids, qs, answers = [], [], []
      for n, qa in enumerate(_field(par, 'qas', pw, path, list)):
        qw = f'{pw}.qas[{n}]'
        qid = _field(qa, 'id', qw, path)
        if qid in seen_q:
          raise ValueError(f'{path}: {qw}.id: duplicate question id {qid!r}')
        seen_q.add(qid)
        qids.append(qid)
        qs.append(_field(qa, 'question', qw, path).strip())
        answers.append(_answer(qa, raw, lead, f'{qw}.answers[0]', path))
      out.append(XquadParagraph(f'{lang}:{title}_p{j}', context,
                                tuple(qids), tuple(qs), tuple(answers)))
  return tuple(out)


def _answer(qa: dict, raw_context: str, lead: int, where: str,
            path: str) -> tuple[int, str]:
  """(offset in the stripped context, text) of a question's first answer;
  the offset must point at the text in the context."""
  answers = _field(qa, 'answers', where.rsplit('.', 1)[0], path, list)
  if not answers:
    raise ValueError(f'{path}: {where}: no answer')
  text = _field(answers[0], 'text', where, path)
  start = _field(answers[0], 'answer_start', where, path, int)
  if raw_context[start:start + len(text)] != text:
    raise ValueError(
        f'{path}: {where}.answer_start: {start} does not point at the '
        f'answer {text!r:.60} (the context there reads '
        f'{raw_context[start:start + len(text)]!r:.60})')
  return start - lead, text


def _xquad_aligned(lang: str, pivot: str = 'en'):
  """Paragraphs of `lang`, checked to hold the same question ids as `pivot`."""
  mine, ref = xquad_paragraphs(lang), xquad_paragraphs(pivot)
  if len(mine) != len(ref):
    raise ValueError(f'XQuAD {lang} has {len(mine)} paragraphs, {pivot} has '
                     f'{len(ref)}: the files are not parallel')
  for p, r in zip(mine, ref):
    if p.pid.split(':', 1)[1] != r.pid.split(':', 1)[1] or (
        p.question_ids != r.question_ids):
      raise ValueError(f'XQuAD {lang} paragraph {p.pid} does not line up with '
                       f'{r.pid} of {pivot} (titles or question ids differ)')
  return mine


def xquad(query_lang: str, *, corpus: str = 'en',
          split: str | None = None) -> RetrievalSet:
  """Questions of `query_lang` against paragraphs (see module docstring).

  corpus: a language code (its 240 paragraphs) or 'pool' (all 12 x 240).
  split:  None (all 1,190 questions), 'train' or 'test' (`xquad_split`).
  """
  if split not in (None, 'train', 'test'):
    raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
  pars = _xquad_aligned(query_lang)
  langs = XQUAD_LANGUAGES if corpus == 'pool' else (corpus,)
  by_lang = {l: _xquad_aligned(l) for l in langs}
  doc_ids = tuple(p.pid for l in langs for p in by_lang[l])
  docs = tuple(p.context for l in langs for p in by_lang[l])
  qids, queries, qrels = [], [], {}
  for j, par in enumerate(pars):
    for qid, q in zip(par.question_ids, par.questions):
      if split is not None and xquad_split(qid) != split:
        continue
      qids.append(qid)
      queries.append(q)
      qrels[qid] = {by_lang[l][j].pid: 1 for l in langs}
  name = f'xquad:{query_lang}->{corpus}' + (f':{split}' if split else '')
  return RetrievalSet(name, tuple(qids), tuple(queries), doc_ids, docs, qrels)


# ------------------------------------------------------------- Cranfield ---

def cranfield_root() -> str:
  return os.path.join(data_root(), 'cranfield')


def _sgml_records(path: str, fields: str) -> list[tuple[int, dict[str, str]]]:
  """`.I n` records of Cranfield's format -> [(line, {field: text})].

  Lines after the first `.W` belong to the text whatever they start with:
  three abstracts (240, 576, 578) carry stray `.A`/`.B`/`.W` lines in their
  body; they stay text rather than starting new fields.
  """
  records, field = [], None
  for n, line in enumerate(_lines(path), start=1):
    marker = re.fullmatch(r'\.([A-Z])(?:\s+(\S+))?\s*', line)
    if marker and marker.group(1) == 'I':
      if not marker.group(2):
        raise ValueError(f'{path}:{n}: `.I` without a number')
      records.append((n, {'I': marker.group(2)}))
      field = None
      continue
    if not records:
      if line.strip():
        raise ValueError(f'{path}:{n}: text before the first `.I` record')
      continue
    rec = records[-1][1]
    if marker and (marker.group(1) not in fields or marker.group(2)):
      known = ' '.join('.' + f for f in 'I' + fields)
      raise ValueError(f'{path}:{n}: unexpected marker {line.strip()!r}; '
                       f'expected one of {known}')
    if marker and field != 'W':
      name = marker.group(1)
      if name in rec:
        raise ValueError(f'{path}:{n}: field .{name} twice in record '
                         f'.I {rec["I"]}')
      field, rec[name] = name, ''
      continue
    if marker:                       # a stray marker inside the text
      continue
    if field is None:
      if line.strip():
        raise ValueError(f'{path}:{n}: text outside any field of record '
                         f'.I {rec["I"]}')
      continue
    rec[field] = (rec[field] + ' ' + line.strip()).strip()
  for n, rec in records:
    if 'W' not in rec:
      raise ValueError(f'{path}:{n}: record .I {rec["I"]} has no .W field')
  return records


def cranfield() -> RetrievalSet:
  """The Cranfield collection with graded qrels (module docstring)."""
  return _cranfield(cranfield_root())


@functools.lru_cache(maxsize=None)
def _cranfield(root: str) -> RetrievalSet:
  doc_path = os.path.join(root, 'cran.all.1400')
  qry_path = os.path.join(root, 'cran.qry')
  rel_path = os.path.join(root, 'cranqrel')
  docs = _sgml_records(doc_path, 'TABW')
  for i, (n, rec) in enumerate(docs):
    if rec['I'] != str(i + 1):
      raise ValueError(f'{doc_path}:{n}: expected document .I {i + 1}, got '
                       f'.I {rec["I"]} (documents must be numbered in order)')
  queries = _sgml_records(qry_path, 'W')
  for n, rec in queries:
    if not rec['W']:
      raise ValueError(f'{qry_path}:{n}: query .I {rec["I"]} has empty text')
  qids = tuple(str(i + 1) for i in range(len(queries)))
  dids = tuple(str(i + 1) for i in range(len(docs)))
  qrels: dict[str, dict[str, int]] = {}
  for n, line in enumerate(_lines(rel_path), start=1):
    if not line.strip():
      continue
    parts = line.split()
    if len(parts) != 3 or not all(re.fullmatch(r'-?\d+', p) for p in parts):
      raise ValueError(f'{rel_path}:{n}: expected "<query> <doc> <code>" '
                       f'(three integers), got {line.strip()!r}')
    q, d, code = (int(p) for p in parts)
    if not 1 <= q <= len(qids):
      raise ValueError(f'{rel_path}:{n}: query {q} is not in 1..{len(qids)}')
    if not 1 <= d <= len(dids):
      raise ValueError(f'{rel_path}:{n}: document {d} is not in '
                       f'1..{len(dids)}')
    if code not in (-1, 1, 2, 3, 4):
      raise ValueError(f'{rel_path}:{n}: relevance code {code} is not one of '
                       '-1, 1, 2, 3, 4 (cranqrel.readme)')
    judged = qrels.setdefault(str(q), {})
    if str(d) in judged:
      raise ValueError(f'{rel_path}:{n}: query {q} judges document {d} twice')
    judged[str(d)] = 0 if code == -1 else 5 - code
  return RetrievalSet('cranfield', qids, tuple(r['W'] for _, r in queries),
                      dids, tuple(r['W'] for _, r in docs), qrels)


def available(name: str) -> bool:
  """Whether the files of 'flores' / 'xquad' / 'cranfield' are present."""
  paths = {'flores': os.path.join(flores_root(), f'{FLORES_PIVOT}.devtest'),
           'xquad': os.path.join(xquad_root(), 'xquad.en.json'),
           'cranfield': os.path.join(cranfield_root(), 'cranqrel')}
  return os.path.exists(paths[name])
