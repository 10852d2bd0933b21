"""Data in: the glyph world, corpus ingestion, keyword retrieval, gender indicators, sentence
embeddings, and the text rules (articles, plurals, prompt templates) they share."""
