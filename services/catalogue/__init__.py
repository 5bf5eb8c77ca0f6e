"""Catalogue: scripts, versions, parameters and content blobs."""
