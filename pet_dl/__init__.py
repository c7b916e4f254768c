"""pet_dl: deep-learning reconstruction of low-dose and fast PET scans.

Layers, lowest first: ``geometry`` < ``projector`` < ``operators`` / ``forward_model`` <
``simulate`` / ``recon`` < ``models`` < ``training`` / ``inference`` < command lines.
See ``docs/architecture.md``.
"""

__version__ = "0.1.0"
