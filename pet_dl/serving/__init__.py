"""TorchServe serving: the handler (``handler.py``, needs the ``serve`` extra) and
``config.properties``. Nothing here is imported by the rest of pet_dl."""
