"""Fidelity and grading metrics: FID, SWD, kappa."""
