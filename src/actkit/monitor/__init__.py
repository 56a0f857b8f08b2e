"""Monitoring: read behaviours out of activations (probes with held-out AUROC, per-token scores while generating,
a latent guard on the prompt, out-of-distribution scores). The reading side of what `actkit.steer` writes."""

from __future__ import annotations

from actkit.monitor.guard import ProbeGate, guard_writes, guarded_generate
from actkit.monitor.probe import (
    METHODS,
    Probe,
    auroc,
    calibrate,
    check_probe_fits,
    load_probe,
    probe_from_vector,
    save_probe,
    text_activations,
    threshold_at_fpr,
    train_probe,
)
from actkit.monitor.tokens import monitor_generate

__all__ = [
    "METHODS", "Probe", "ProbeGate", "auroc", "calibrate", "check_probe_fits", "guard_writes", "guarded_generate",
    "load_probe", "monitor_generate", "probe_from_vector", "save_probe", "text_activations", "threshold_at_fpr",
    "train_probe",
]
