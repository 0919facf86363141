"""The retrieval application's commands (`rosetta index`, `search`, `bm25`,
`score`): one module each, registered in setup.py's `rosetta.commands`."""
