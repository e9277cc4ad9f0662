"""Target inference engines behind one interface (``inference.engine``)."""
