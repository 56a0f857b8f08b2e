"""Readers for published behaviour and norm data sets, turned into the contrast pairs and prompts that
`actkit vector train`, `actkit eval steering` and the monitors take.

The public API: `convert(format, path)` -> `Converted` (pairs as JSON-ready dicts in the form
`actkit.steer.pairs` reads, prompts, skipped-row counts); `save(converted, pairs_out, prompts_out)`; `FORMATS`,
the formats by name (Social Chemistry 101, Scruples anecdotes and dilemmas, Moral Stories, ETHICS commonsense,
MoCa, NormBank, the Moral Foundations Questionnaire). No data ships with actkit: docs/datasets.md says where each
data set is published and under which licence.
"""

from __future__ import annotations

from actkit.datasets.norms import FORMATS, Converted, Format, convert, save

__all__ = ["FORMATS", "Converted", "Format", "convert", "save"]
