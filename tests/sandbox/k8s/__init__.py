"""Kubernetes API emulator for the sandbox (see README.md here)."""
