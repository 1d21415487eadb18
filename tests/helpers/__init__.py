"""What the tests share: paths and tiny run settings, the float64 oracle, kernel parity cases,
offline W&B records, fault-injection callbacks, and the scripts that tests run in a subprocess.

Importable as ``helpers`` because pytest puts ``tests/`` on ``sys.path`` (``pythonpath`` in pyproject.toml).
"""
