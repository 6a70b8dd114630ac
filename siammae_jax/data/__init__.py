"""Video data: sources, packing, pairs and the input pipeline."""
