"""Retrieval on Rosetta: dual encoders (dual_encoder, contrastive,
dual_encoder_model, pair_tasks), indexing, search and IR metrics,
rerankers (monoT5, RankT5), teachers for distillation, and generative
retrieval (DSI). Imports `rosetta`; modules are imported
explicitly (nothing is re-exported here)."""
