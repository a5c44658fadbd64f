"""Training data: audio sources with disjoint splits, procedural noise and rooms, on-the-fly mixtures."""
