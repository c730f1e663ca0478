"""Training: grader and grading spaces, the DR-GAN objective and loop."""
