"""The virtrigaud manager: controllers driving VMMigration, VirtualMachine and Provider."""
