"""Identity resolution: identifier extraction and normalization, the identity graph."""
