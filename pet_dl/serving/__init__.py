"""TorchServe serving: the handler (``handler.py``, needs the ``serve`` extra),
``config.properties``, the image's entrypoint, the readiness check (``healthcheck.py``) and
a loopback server for tests and benchmarks (``local.py``, standard library only). Nothing
here is imported by the rest of pet_dl."""
