"""Stand-ins for the platform API and Kubernetes, run as real servers for tests and `make demo`.

See tests/sandbox/README.md.
"""
