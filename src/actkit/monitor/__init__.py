"""Monitoring: read behaviours out of activations (probes with held-out AUROC, per-token scores while generating,
a latent guard on the prompt, out-of-distribution scores). The reading side of what `actkit.steer` writes."""
