"""Tests of manager.store."""
