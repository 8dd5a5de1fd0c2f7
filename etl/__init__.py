"""Source registry, extraction, standardization and the sample city."""
