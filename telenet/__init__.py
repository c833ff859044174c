"""telenet: Docker network and volume plug-ins for Telepresence's containerized daemon."""

__version__ = "0.1.0"
