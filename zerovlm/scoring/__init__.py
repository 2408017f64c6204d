"""Answer parsing, metrics, significance and a text view of one instance's summary; takes predictions as data
and never imports a model."""
