"""The bundled synthetic sample: its generator (planted shortcuts) and its build (training the
``shortcut`` and ``clean`` checkpoints). ``python -m mmaudit.sample FOLDER`` rebuilds it."""
