"""Tests of manager.runtime."""
