"""The core: sites, the anatomy of each model family, the hook engine, positions, reducers and `collect`."""
