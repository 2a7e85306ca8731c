"""Bags, batches and the training loop (paper Appendix C.2)."""
