"""Part 4: embeddings and retrieval."""
