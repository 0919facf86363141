"""The `search` endpoint of `rosetta serve` (rosetta/serving/).

    rosetta serve --index runs/index --k 10
    POST /v1/search  {"query": "do cats purr?", "k": 5}
    -> {"results": [{"doc_id": "d17", "score": 0.83}, ...]}

Queries are encoded by the model that built the index (`rosetta index`
records it; another is refused) and searched exactly over the whole index
(--search_mode exact / bfloat16 / verified, as `rosetta search --mode`),
so an answer holds the documents and scores of `rosetta search` for the
same query. Hubness corrections need a bank of queries and are left to
`rosetta search`. Requests asking for the same k run as one batch.
"""

from __future__ import annotations

import numpy as np

from rosetta.serving.endpoints import Endpoint, Field

MAX_K = 1000


def add_arguments(group) -> None:
  group.add_argument('--k', type=int, default=10,
                     help='search: documents per query unless the request '
                     f'says (at most {MAX_K})')
  group.add_argument('--search_mode', default='exact',
                     choices=('exact', 'bfloat16', 'verified'),
                     help='search: as `rosetta search --mode`')


def endpoints(args) -> list[Endpoint]:
  """[the search endpoint] when --index is given."""
  if args.index is None:
    return []
  if not 1 <= args.k <= MAX_K:
    raise ValueError(f'--k {args.k}: must be 1..{MAX_K}')
  from retrieval.dense import searcher as searcher_lib  # pylint: disable=import-outside-toplevel
  # --model_dir is the translation run when both are served; the index
  # names its own model.
  searcher = searcher_lib.Searcher.open(args.index, mode=args.search_mode,
                                        batch_size=args.max_batch)
  num_docs = len(searcher.index.doc_ids)

  def check(request: dict) -> str | None:
    if not request['query'].strip():
      return 'query is empty'
    if not 1 <= request['k'] <= MAX_K:
      return f'k {request["k"]}: must be 1..{MAX_K}'
    return None

  def run_batch(requests: list[dict]) -> list[dict]:
    k = min(requests[0]['k'], num_docs)
    embeddings = searcher.encode_queries([r['query'] for r in requests])
    result = searcher.search(embeddings, k)
    doc_ids = searcher.index.doc_ids
    scores, indices = np.asarray(result.scores), np.asarray(result.indices)
    return [{'results': [{'doc_id': doc_ids[int(i)], 'score': float(s)}
                         for s, i in zip(scores[row], indices[row])]}
            for row in range(len(requests))]

  return [Endpoint(
      name='search',
      summary='the k best documents of the index for a query',
      fields={'query': Field(str, required=True, help='the query text'),
              'k': Field(int, default=args.k, help='how many documents')},
      run_batch=run_batch, check=check, batch_key=lambda r: r['k'])]
