"""The canonical fields: the data dictionary, identifiers, administrative divisions,
normalization and masking.

The bottom layer: it imports no other package of the project."""
