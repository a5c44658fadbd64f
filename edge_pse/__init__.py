"""edge-pse: personalized speech enhancement (E3Net) from training to int8 on Raspberry Pi and ARM CPUs."""

__version__ = "0.1.0"
