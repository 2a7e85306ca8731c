"""Gene selection (paper Appendix B, eq. 19–20) and target normalisation (eq. 21)."""
