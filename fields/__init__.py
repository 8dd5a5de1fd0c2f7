"""The canonical fields: identifiers, administrative divisions, normalization and masking.

The bottom layer: it imports no other package of the project."""
