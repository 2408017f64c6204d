"""Dataset sources (synthetic scenes, VSR, What'sUp) producing the normalised example table."""
