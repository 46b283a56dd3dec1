"""Online serving: ANN retrieval over candidate item embeddings and ranking of live requests."""
