"""Intermediate storage backends (S3, HTTP, NFS) used by providers to move disk bytes."""
