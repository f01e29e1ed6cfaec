"""The controllers of the infrastructure kinds: Provider and VirtualMachine."""
