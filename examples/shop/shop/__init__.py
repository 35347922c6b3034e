"""A tiny shop: a catalogue, stock, carts and prices."""
