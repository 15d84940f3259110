"""The settings of a run, validated by concern; config.build collects every problem before any network."""
