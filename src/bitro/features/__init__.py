"""Cell features: encoders, embedding, dimension reduction, phenotypes and cell graphs."""
