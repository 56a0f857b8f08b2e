"""Sparse autoencoders on any site: top-k training through `collect`'s batches, SAELens files, per-feature input
and output scores, and steering with chosen features."""
