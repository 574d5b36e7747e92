"""What the Flask extension needs beyond the core: ``flask run`` parity."""
