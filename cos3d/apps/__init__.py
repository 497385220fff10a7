"""Applications built on a trained run: the demo, batch training, export."""
