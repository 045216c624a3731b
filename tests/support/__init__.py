"""Builders the tests share: configs, samples and ledgers for the pure budget
(`budget`), a daemon process and its programs (`daemons`), the systemd sandbox's unit
(`systemd`), the joblib tests' budget (`joblib`), a Prometheus fleet (`prometheus`).
Fixtures stay in the conftest.py files and build on these; a test module imports
builders from here, never from a conftest.py or from another test module."""
