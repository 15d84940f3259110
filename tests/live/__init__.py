"""Conformance suite against a live Nezha dashboard (see conftest.py for the NEZHA_LIVE_* settings)."""
