"""The ``govmdm`` command line: commands only, over the pipeline and stage packages."""
