"""The virtrigaud manager: controllers that drive VMMigration, VirtualMachine and Provider objects."""
