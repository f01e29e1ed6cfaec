"""Tests of manager.onemachine (one-machine mode)."""
