"""Plain-Python services: no Flask request objects below this line."""
