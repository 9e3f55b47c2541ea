"""The sync contract: `sync.proto` and the Python code grpcio-tools generates from it.

Regenerate with ``python -m pocketrec.proto._generate`` after editing the ``.proto``.
"""
