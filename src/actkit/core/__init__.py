"""The core: sites, the anatomy of each model family, the hook engine, positions, interventions, reducers,
`collect` and `generate`. The only package that registers torch hooks; its public names are re-exported by
`actkit` itself (see ``README.md`` here for the design notes)."""
