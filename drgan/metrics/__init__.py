"""Fidelity and grading metrics: FID (fid), SWD (swd), condition fidelity (fidelity), accuracy / kappa / TPR
(grading), the grader as an instrument (grade_prediction), image sets (images), and all of them by name
(registry)."""
