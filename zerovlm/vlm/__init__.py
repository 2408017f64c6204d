"""Vision-language model backends behind one small interface."""
