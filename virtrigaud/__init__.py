"""virtrigaud: declarative VM migration between hypervisors."""

__version__ = "0.1.0"
