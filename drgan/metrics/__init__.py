"""Fidelity and grading metrics: FID (fid), SWD (swd), accuracy / kappa / TPR (grading), the grader as an
instrument (grader), image sets (images) and the paper's augmentation experiment (experiment)."""
