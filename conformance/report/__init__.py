"""Reporters: every format is rendered from :class:`conformance.results.RunResult`."""
