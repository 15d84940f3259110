"""nezha-bootstrap: register a Linux server with a Nezha dashboard and install its agent."""

__version__ = "0.1.0"
