"""Runnable training scripts (``python -m train.<name>``); the library never imports them."""
