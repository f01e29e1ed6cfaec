"""Tests of manager.controllers (Provider, VirtualMachine)."""
