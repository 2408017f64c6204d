"""Answer parsing, metrics and reports; reads prediction files and never imports a model."""
