"""Interop: the shipped suites against private Dovecot and Postfix instances.

- :mod:`interop.peers` starts the peers from a temporary directory and writes a target file;
- :mod:`interop.run` runs ``mailharness check`` against them and compares the failures
  with ``interop/expected-failures.yaml``.

See docs/interop.md, "Dovecot and Postfix (suites)".
"""
